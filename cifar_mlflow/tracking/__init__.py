"""MLflow at the edge: the only package that imports `mlflow`, one module per job.

- `store`: the tracking URI, the server check, experiments by id, params and tags written race-safely
- `mlflow_logger`: `MlflowLogger`, the training run's logger (the `RunLogger` of `core.run_logger`)
- `run_inputs`: the data splits as a run's data set inputs; an interrupted run's checkpoint for `--resume`
- `served_model`, `cifar_mlflow_pyfunc`: the logged model (images in; logits, or class names and
  probabilities, out), its pyfunc loader and its registry alias
- `study_run`: `StudyTracker`, a tuning study's parent run
- `run_queries`: runs read back for comparisons, and the comparison's run
- `benchmark_log`: the benchmark's run
- `local_server`: a loopback `mlflow server` for as long as a `with` block (the benchmark, tests)
- `heartbeat`, `faults`: a run's sign of life; failing and silent stores made visible

The commands import this package inside their `main`, after parsing: `--help` answers without
loading MLflow.
"""

from cifar_mlflow.tracking.benchmark_log import log_benchmark
from cifar_mlflow.tracking.heartbeat import mark_stale_runs, refuse_live_run
from cifar_mlflow.tracking.mlflow_logger import MlflowLogger
from cifar_mlflow.tracking.run_inputs import download_checkpoint
from cifar_mlflow.tracking.run_queries import fetch_run_records, fetch_source_run, log_comparison, select_runs
from cifar_mlflow.tracking.served_model import set_model_alias
from cifar_mlflow.tracking.store import check_tracking_server, experiment_id_for, set_tags, tracking_uri
from cifar_mlflow.tracking.study_run import StudyTracker, fail_stale_run

__all__ = ["MlflowLogger", "StudyTracker", "check_tracking_server", "download_checkpoint", "experiment_id_for",
           "fail_stale_run", "fetch_run_records", "fetch_source_run", "log_benchmark", "log_comparison",
           "mark_stale_runs", "refuse_live_run", "select_runs", "set_model_alias", "set_tags", "tracking_uri"]
