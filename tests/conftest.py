"""Shared fixtures: tiny data sets in real on-disk formats, and a real `mlflow server`."""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_mlflow.tracking.local_server import ServerStartError, free_port, local_mlflow_server
from cifar_mlflow.tracking.local_server import running_server as serve

# Seconds each test file took (the sum of its tests, fixtures included), `make test` on a 2-core CPU.
# `make test` hands the files to its two processes heaviest first (`--dist loadfile
# --no-loadscope-reorder` keeps this order), so the short files fill in at the end instead of one
# process finishing a long file alone. Files not listed follow in name order. Re-measure with
# `make test PYTEST_ARGS=--junitxml=times.xml` when a file's weight changes a lot; a stale figure only
# costs balance, never a test.
FILE_SECONDS = {
    "test_from_run.py": 140, "test_bench.py": 116, "test_mlflow_run.py": 116, "test_auth.py": 109,
    "test_tune.py": 108, "test_served_model.py": 74, "test_tracking_server.py": 59, "test_gpu_session.py": 51,
    "test_fast_recipe.py": 47, "test_distributed.py": 47, "test_startup.py": 43, "test_train_cli.py": 35,
    "test_dashboard.py": 29, "test_local_server.py": 25, "test_browser.py": 19, "test_models.py": 16,
    "test_references.py": 15, "test_training.py": 15, "test_data.py": 11, "test_hardware.py": 11, "test_compare.py": 10,
}


def pytest_collection_modifyitems(config, items) -> None:
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))  # stable: each file's own order kept


ROOT = Path(__file__).resolve().parent.parent
# Decoded image folders are cached per test process, not in the user's ~/.cache (subprocesses inherit it), and
# removed when the process ends.
_CACHE_DIR = tempfile.mkdtemp(prefix="cifar-mlflow-cache-")
os.environ["CIFAR_MLFLOW_CACHE_DIR"] = _CACHE_DIR
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
CLASSES = ["cat", "dog", "ship"]


def class_images(rng: np.random.Generator, label: int, n: int, size: int, channels: int = 3) -> np.ndarray:
    """(n, size, size, channels) uint8 images whose colour depends on the class: easy to learn."""
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40], [40, 200, 200]])[label % 5]
    noise = rng.integers(-30, 31, size=(n, size, size, 3))
    images = np.clip(base + noise, 0, 255).astype(np.uint8)
    return images[..., :1] if channels == 1 else images


def write_imagefolder(root: Path, n_train: int = 24, n_test: int = 9, size: int = 32,
                      classes: list[str] = CLASSES, fmt: str = "png") -> Path:
    """train/<class>/*.png and test/<class>/*.png, as an ImageFolder."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(class_images(rng, label, n, size)):
                Image.fromarray(image).save(folder / f"{i:04d}.{fmt}")
    return root


def write_cifar10(root: Path, per_batch: int = 50, n_test: int = 40) -> Path:
    """cifar-10-batches-py/ with pickled batches laid out exactly as the real download."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def batch(n: int) -> dict:
        labels = rng.integers(0, 10, n)
        images = np.stack([class_images(rng, int(y), 1, 32)[0] for y in labels])  # (n, 32, 32, 3)
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # rows: R plane, G plane, B plane
        return {"data": data, "labels": labels.tolist()}  # keys as the real (latin-1 read) files give them

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return root


def write_mnist(root: Path, n_train: int = 60, n_test: int = 20, folder: str = "MNIST") -> Path:
    """<folder>/raw/*-ubyte in the IDX format torchvision reads (MNIST, FashionMNIST)."""
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return root


@pytest.fixture(scope="session")
def imagefolder(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("imagefolder"))


def mlflow_bin() -> str:
    return str(Path(sys.executable).parent / "mlflow")


@contextlib.contextmanager
def running_server(command: list[str], uri: str, log_path: Path, env: dict[str, str] | None = None):
    """Start a server process, wait for `uri`/health, yield `uri`, stop it; the test fails with its log."""
    try:
        with serve(command, uri, log_path, env) as ready:
            yield ready
    except ServerStartError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def mlflow_server_and_root(tmp_path_factory):
    """A real `mlflow server` on a free loopback port (SQLite `ROOT/mlflow.db` + proxied artifacts), stopped
    after: (its URI, ROOT)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    try:
        with local_mlflow_server(root) as uri:  # the benchmark's own
            yield uri, root
    except ServerStartError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_and_root):
    """The URI of the suite's real `mlflow server` (SQLite + proxied artifacts)."""
    return mlflow_server_and_root[0]


def run_env(**extra: str) -> dict[str, str]:
    """Environment for subprocess runs: no inherited MLflow run, quiet and CPU-only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # As with an activated virtual environment: `python` (used by `mlflow run`) is this one.
    path = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", PATH=path)
    env.update(extra)
    return env


def as_foreground() -> None:
    """`preexec_fn` for a child the test will Ctrl-C: a shell running the suite in the background
    (`make test &`) starts it with SIGINT ignored, and Python then installs no KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)



def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class PostgresServer:
    """A real PostgreSQL server (Debian's package) on a free loopback port, run by its own user."""

    def __init__(self, bindir: Path, root: Path, port: int, as_postgres: list[str]) -> None:
        self.bindir, self.root, self.port, self.as_postgres = bindir, root, port, as_postgres
        self.data = root / "data"

    def pg(self, *cmd: str) -> None:
        subprocess.run([*self.as_postgres, str(self.bindir / cmd[0]), *cmd[1:]], check=True, capture_output=True,
                       timeout=120)

    def url(self, database: str) -> str:
        return f"postgresql://test@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self.pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "test", name)
        return self.url(name)

    def start(self) -> None:
        self.pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "-o",
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300", "start")

    def stop(self) -> None:
        self.pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture(scope="session")
def postgres():
    """A `PostgresServer` with databases `optuna` and `mlflow`, stopped after."""
    import shutil
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (.ci/run installs Debian's postgresql package)")
    # Not under pytest's temporary folder: that is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="cifar-mlflow-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(bindir, root, free_port(), as_postgres)
    server.pg("initdb", "-D", str(server.data), "-A", "trust", "-U", "test")
    server.start()
    try:
        for database in ("optuna", "mlflow"):  # the two databases of docker/docker-compose.yml
            server.create_database(database)
        yield server
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(server.data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres):
    """The URL of the `optuna` database of the suite's PostgreSQL server."""
    return postgres.url("optuna")


@pytest.fixture(scope="session")
def two_runs(mlflow_server, imagefolder, tmp_path_factory) -> tuple[str, str]:
    """Two short runs of different architectures in experiment `compare-test` on the server; their ids."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from cifar_mlflow import train

    workdir = tmp_path_factory.mktemp("compare-runs")
    ids = []
    for arch in ("cnn_small", "lenet"):
        code = train.main(["--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", arch,
                           "--epochs", "2", "--batch-size", "16", "--no-progress", "--log-model", "false",
                           "--experiment-name", "compare-test", "--tracking-uri", mlflow_server,
                           "--checkpoint-dir", str(workdir)])
        assert code == 0
        mlflow.set_tracking_uri(mlflow_server)
        client = MlflowClient()
        experiment = client.get_experiment_by_name("compare-test")
        (run,) = client.search_runs([experiment.experiment_id], filter_string=f"params.arch = '{arch}'")
        ids.append(run.info.run_id)
    return ids[0], ids[1]


@contextlib.contextmanager
def small_disk(path: Path, size_bytes: int):
    """A tmpfs of `size_bytes` mounted at `path` (a full disk on demand). Where mounting is not allowed the
    test fails and says so (a skipped full-disk test would read as a pass in CI's summary); run these as
    root, or leave them out by name (`-k 'not full'`) and say so."""
    path.mkdir(parents=True, exist_ok=True)
    size_kib = max(4, -(-size_bytes // 4096) * 4)  # whole pages
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the full-disk test here (it needs root): "
                    f"{proc.stderr.strip()[:200]}; run as root, or deselect it with -k 'not full'", pytrace=False)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
