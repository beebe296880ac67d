"""Hyper-parameter studies (``seqrec tune``): search spaces over the run config, Optuna studies."""
