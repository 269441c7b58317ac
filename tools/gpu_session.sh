#!/usr/bin/env bash
# The GPU section of docs/benchmarks.md as one prepared script, for a machine with an NVIDIA GPU and
# PyTorch but no network (and no MLflow or Optuna until their wheels are installed from .whl/).
#
# Prepare, on a machine with the package index and ../shared (the repository root):
#   ../shared/tools/gpu-wheels.sh                       # .whl/: MLflow (client) and Optuna, about 20 MB
#   mkdir -p data && cp ../shared/data/cifar10-jpg.tar.gz data/
# Then, on the GPU machine, from the repository root (sections run in the order given):
#   tools/gpu_session.sh check bench fast tune          # 9.5 minutes at most with the default limits
#   tools/gpu_session.sh reference                      # the long recipes, each as far as REFERENCE_S allows
#
# Sections:
#   check      versions, the GPU, and short training runs on it (the CUDA line end to end; then fp16 with its
#              gradient scaler)
#   bench      python -m cifar_mlflow.bench: training images/s against the DataLoader + PIL pipeline,
#              the data path alone, MLflow tracking overhead (against the embedded SQLite store: the
#              carried mlflow-skinny cannot run `mlflow server`)
#   fast       the fast recipe over 3 seeds with MLflow logging: accuracy and training seconds
#   tune       python -m cifar_mlflow.tune --recipe fast --trials 50, stopped after TUNE_S seconds
#   reference  mobilenetv2, mobilenetv3_small, mobilenetv3_large, resnet18 (REFERENCE_ARCHS) at their
#              recommended settings, REFERENCE_S seconds each (a run stopped there ends KILLED with
#              its epochs)
#
# Everything lands in $OUT (default ./gpu-out): gpu.log (all output), bench.json, fast.json,
# summary.txt (every run: name, status, epochs, test accuracy, wall time) and stores.tar.gz (the
# MLflow and Optuna databases: params, metrics and tags of every run and trial; artifacts stay on
# the machine). Each section runs under a time limit and is stopped with SIGTERM, so its run ends
# KILLED, never RUNNING; a failed section does not stop the next. Exit status: the number of
# sections that failed or were stopped.
#
# Environment: OUT; STORE (where the databases, artifacts and checkpoints go; default
# /tmp/cifar_mlflow-gpu-store); DATA_DIR (default data/cifar10-jpg, extracted from DATA_TAR, default
# data/cifar10-jpg.tar.gz, where it has no train/ folder yet);
# CHECK_S, BENCH_S, FAST_S, TUNE_S, REFERENCE_S (time limits, seconds); DEVICE (default cuda; cpu to rehearse
# the script on a machine without a GPU); EXTRA_ARGS (appended to every training and tuning
# command) and BENCH_ARGS (to every bench command), to rehearse with tiny runs. Relative paths are
# taken from the repository root.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=$(realpath -m "${OUT:-gpu-out}")
DATA_DIR=$(realpath -m "${DATA_DIR:-data/cifar10-jpg}")
DATA_TAR=$(realpath -m "${DATA_TAR:-data/cifar10-jpg.tar.gz}")
DEVICE=${DEVICE:-cuda}
CHECK_S=${CHECK_S:-120}
BENCH_S=${BENCH_S:-180}
FAST_S=${FAST_S:-120}
TUNE_S=${TUNE_S:-90}
REFERENCE_S=${REFERENCE_S:-120}
REFERENCE_ARCHS=${REFERENCE_ARCHS:-mobilenetv2 mobilenetv3_small mobilenetv3_large resnet18}
EXTRA_ARGS=${EXTRA_ARGS:-}
BENCH_ARGS=${BENCH_ARGS:-}
STORE=$(realpath -m "${STORE:-/tmp/cifar_mlflow-gpu-store}")
SECTIONS="check bench fast tune reference"  # each one a section_NAME function below
[ $# -gt 0 ] || { echo "usage: tools/gpu_session.sh SECTION... ($SECTIONS)" >&2; exit 2; }
for section in "$@"; do
  [[ " $SECTIONS " == *" $section "* ]] \
    || { echo "unknown section: $section (choose from: $SECTIONS)" >&2; exit 2; }
done
mkdir -p "$OUT" "$STORE"
export MLFLOW_TRACKING_URI="sqlite:///$STORE/mlflow.db"
OPTUNA_STORAGE="sqlite:///$STORE/optuna.db"
DATA=(--dataset imagefolder --data-dir "$DATA_DIR")
exec > >(tee -a "$OUT/gpu.log") 2>&1
failed=0

say() { echo "=== $(date -u +%FT%TZ) $*"; }

# Runs "$@" for at most $1 seconds; SIGTERM first (the product ends its run KILLED), SIGKILL 30 s later.
# From $STORE, so that the runs' artifacts (./mlruns beside a SQLite store) stay out of the checkout.
limited() {
  local seconds=$1; shift
  (cd "$STORE" && timeout --signal=TERM --kill-after=30 "$seconds" "$@")
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    failed=$((failed + 1))
    if [ "$rc" -eq 124 ]; then say "stopped after ${seconds}s: $*"; else say "exit status $rc: $*"; fi
  fi
  return 0
}

setup() {
  if ! python3 -c "import mlflow, optuna" 2>/dev/null; then
    [ -d .whl ] || { say "MLflow/Optuna missing and no .whl/ here: run ../shared/tools/gpu-wheels.sh first"; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { say "installing .whl/ failed"; exit 2; }
    export PYTHONPATH=/tmp/site:$PWD
  else
    export PYTHONPATH=$PWD
  fi
  for section in "$@"; do
    [ "$section" = check ] || need_data=1
  done
  if [ -n "${need_data:-}" ] && [ ! -d "$DATA_DIR/train" ]; then
    [ -f "$DATA_TAR" ] || { say "no $DATA_DIR/train and no $DATA_TAR to extract it from"; exit 2; }
    say "extracting $DATA_TAR into $DATA_DIR"
    mkdir -p "$DATA_DIR" && tar -xzf "$DATA_TAR" -C "$DATA_DIR" || { say "extracting $DATA_TAR failed"; exit 2; }
  fi
}

section_check() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "(no nvidia-smi)"
  python3 - <<'EOF'
import platform, torch, torchvision, mlflow, optuna
print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"mlflow {mlflow.__version__}, optuna {optuna.__version__}")
print("cuda:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available")
EOF
  limited "$CHECK_S" python3 -m cifar_mlflow.train --arch cnn_small --dataset synthetic --epochs 2 --max-train-samples 4096 \
    --device "$DEVICE" --no-progress --experiment-name gpu-check --run-name "check-$DEVICE" $EXTRA_ARGS
  # fp16 with the gradient scaler (what --precision auto picks on a GPU without bf16), GPUs only
  if [ "$DEVICE" != cpu ]; then
    limited "$CHECK_S" python3 -m cifar_mlflow.train --arch cnn_small --dataset synthetic --epochs 2 \
      --max-train-samples 4096 --device "$DEVICE" --precision fp16 --no-progress --experiment-name gpu-check \
      --run-name "check-$DEVICE-fp16" $EXTRA_ARGS
  fi
}

section_bench() {
  limited "$BENCH_S" python3 -m cifar_mlflow.bench "${DATA[@]}" --device "$DEVICE" --sections training data_path tracking \
    --tracking-store sqlite \
    --json "$OUT/bench.json" --log --no-progress $BENCH_ARGS
}

section_fast() {
  limited "$FAST_S" python3 -m cifar_mlflow.bench "${DATA[@]}" --device "$DEVICE" --sections time_to_accuracy --seeds 3 \
    --tracking-store sqlite \
    --json "$OUT/fast.json" --log --no-progress $BENCH_ARGS
}

section_tune() {
  # --timeout: no new trial after it; the outer limit leaves the last trial 30 s to end.
  limited $((TUNE_S + 30)) python3 -m cifar_mlflow.tune --recipe fast --trials 50 --timeout "$TUNE_S" "${DATA[@]}" \
    --device "$DEVICE" --storage "$OPTUNA_STORAGE" --study-name "fast-gpu" --no-progress $EXTRA_ARGS
}

section_reference() {
  for arch in $REFERENCE_ARCHS; do
    limited "$REFERENCE_S" python3 -m cifar_mlflow.train --arch "$arch" "${DATA[@]}" --device "$DEVICE" --no-progress \
      --experiment-name reference-gpu --checkpoint-dir "$STORE/checkpoints" $EXTRA_ARGS
  done
}

summarise() {
  python3 - "$STORE/mlflow.db" > "$OUT/summary.txt" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("""
  select e.name, r.name, substr(r.run_uuid, 1, 8), r.status, (r.end_time - r.start_time) / 1000.0,
         (select value from latest_metrics m where m.run_uuid = r.run_uuid and m.key = 'epochs_trained'),
         (select max(step) from metrics m where m.run_uuid = r.run_uuid and m.key = 'val_acc'),
         (select value from latest_metrics m where m.run_uuid = r.run_uuid and m.key = 'test_acc'),
         (select value from latest_metrics m where m.run_uuid = r.run_uuid and m.key = 'val_acc')
  from runs r join experiments e on e.experiment_id = r.experiment_id order by r.start_time""").fetchall()
print(f"{'experiment':<22} {'run':<40} {'id':<8} {'status':<9} {'wall s':>8} {'epochs':>6} {'val_acc':>8} {'test_acc':>8}")
for exp, name, rid, status, wall, epochs, last_epoch, test, val in rows:
    epochs = epochs if epochs is not None else last_epoch
    fmt = lambda v, f: format(v, f) if v is not None else "-"
    print(f"{exp:<22} {name:<40} {rid:<8} {status:<9} {fmt(wall, '8.1f')} {fmt(epochs, '6.0f')} "
          f"{fmt(val, '8.4f')} {fmt(test, '8.4f')}")
EOF
  cat "$OUT/summary.txt"
  tar -czf "$OUT/stores.tar.gz" -C "$STORE" $(cd "$STORE" && ls mlflow.db optuna.db 2>/dev/null)
}

setup "$@"
for section in "$@"; do
  say "section $section"
  "section_$section"
done
say "summary"
summarise
say "done; sections failed or stopped: $failed"
exit "$failed"
