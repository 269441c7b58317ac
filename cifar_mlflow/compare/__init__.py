"""`python -m cifar_mlflow.compare`: an HTML report comparing runs, on what the MLflow UI cannot draw.

- `cli`: the command (`CompareConfig`, selecting runs, writing and logging the report)
- `analysis`: the maths and the figures on plain `RunRecord`s (no MLflow)
- `report`: the self-contained HTML page
"""

from cifar_mlflow.compare.cli import main

__all__ = ["main"]
