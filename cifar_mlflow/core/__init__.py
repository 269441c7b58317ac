"""The training run without MLflow, Optuna or a command line: `prepare` (config, data, model), `fit` (the
loop: `passes` holds the passes over the data), the optimizers (`optimizers`, `muon`), the resumable state
(`checkpoint`), and the `RunLogger` boundary with the one rule for a run's final status (`run_logger`)."""
