"""CPU simulation harness: built-in corpus, small models, sweeps and reports."""
