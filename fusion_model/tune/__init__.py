"""Hyperparameter search with Optuna: the objective and workers (search) and the
`fusion-model tune` runner with its outputs (run)."""
