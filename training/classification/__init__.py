"""Sepsis classifiers: models, the leak audit, metrics with intervals, the classification
protocol (`experiment`), its documents and figures, and the saved model file."""
