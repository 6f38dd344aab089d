"""Learning from logged decisions: logged episodes (`data`, `logs`), offline training (BC, MARWIL,
discrete CQL) and off-policy evaluation (`ope`)."""
