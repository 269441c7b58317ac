"""`python -m cifar_mlflow.bench`: how fast this pipeline trains, next to the conventional one.

- `cli`: the command (options, the machine, running the sections, JSON and MLflow output)
- `options`: `BenchConfig` and the training config each section uses
- `sections`: what is measured (training throughput, data paths, tracking overhead, time to accuracy)
- `throughput`: timing loops shared by the sections
- `baseline_pipeline`: the conventional `DataLoader` + PIL pipeline measured against
- `tables`: the results as markdown
"""

from cifar_mlflow.bench.cli import main

__all__ = ["main"]
