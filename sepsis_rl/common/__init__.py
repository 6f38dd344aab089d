"""The bottom layer: helpers that know nothing of sepsis, RL or PhysioNet (files written
atomically, intervals, Markdown tables, config files, starting Ray). Every package may import it;
it imports none of them."""
