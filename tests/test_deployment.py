"""The docker stack, proven natively: the compose file's own server command on a real PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from cifar_mlflow.tracking.local_server import CONNECTIONS_PER_WORKER
from tests.conftest import ROOT, free_port, mlflow_bin, run_env, running_server

COMPOSE = ROOT / "docker" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}, from `env`."""
    def value(match: re.Match) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return rest
        if op == ":?":
            raise KeyError(f"{name}: {rest}")
        return env.get(name, "")
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", value, text)


def test_compose_services_and_settings() -> None:
    services = compose()["services"]
    assert {"postgres", "mlflow", "trainer", "tuner", "minio"} <= set(services)
    server = services["mlflow"]["entrypoint"]
    assert server[:2] == ["mlflow", "server"]
    backend = server[server.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql://") and "@postgres:5432/${MLFLOW_DB}" in backend
    assert "--serve-artifacts" in server and "--artifacts-destination" in server
    assert "mlflow" in server[server.index("--allowed-hosts") + 1].split(",")  # in-network host name accepted
    assert "healthcheck" in services["mlflow"] and "healthcheck" in services["postgres"]
    for name in ("trainer", "tuner"):
        env = services[name]["environment"]
        assert interpolate(env["MLFLOW_TRACKING_URI"], {}) == "http://mlflow:5000"
        assert env["OPTUNA_STORAGE"].startswith("postgresql://") and env["OPTUNA_STORAGE"].endswith("/${OPTUNA_DB}")
        assert "deploy" not in services[name]  # no GPU asked for: the stack starts on a CPU-only host
    assert services["minio"]["profiles"] == ["s3"]
    max_connections = int(services["postgres"]["command"][-1].split("=")[1])
    for name in ("mlflow", "mlflow-auth"):
        # No GenAI job runner unless docker/.env turns it on; the database pool of the product's own servers
        # (more connections than a worker's 40 request threads), so many writers never stall the server.
        settings = server_settings(services[name])
        assert settings == {**CONNECTIONS_PER_WORKER, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        entrypoint = services[name]["entrypoint"]
        workers = int(entrypoint[entrypoint.index("--workers") + 1])
        per_worker = sum(int(v) for v in CONNECTIONS_PER_WORKER.values())
        assert per_worker > 40 and workers * per_worker + 50 <= max_connections  # 50 left for Optuna's workers


def test_the_gpu_override_gives_the_trainer_and_tuner_every_gpu_and_nothing_else() -> None:
    override = yaml.safe_load((ROOT / "docker" / "docker-compose.gpu.yml").read_text())["services"]
    assert set(override) == {"trainer", "tuner"}
    for name in ("trainer", "tuner"):
        assert set(override[name]) == {"deploy"}
        (device,) = override[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}


def test_every_image_is_pinned_and_the_base_image_torch_is_one_the_package_allows() -> None:
    from packaging.requirements import Requirement

    for name, service in compose()["services"].items():
        image = service["image"]
        if image == "cifar-mlflow:latest":  # built here from docker/Dockerfile
            assert name in ("mlflow", "mlflow-auth", "trainer", "tuner", "optuna-dashboard"), name
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and tag not in ("", "latest") and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    base = re.search(r"^FROM pytorch/pytorch:(\d+\.\d+\.\d+)-cuda", dockerfile, flags=re.M)
    assert base, "the trainer image starts from an official pytorch/pytorch image with its version in the tag"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch = next(Requirement(d) for d in pyproject["dependencies"] if Requirement(d).name == "torch")
    assert torch.specifier.contains(base.group(1)), f"base image torch {base.group(1)} is outside {torch.specifier}"
    extras = {e for e in pyproject["optional-dependencies"] if e != "dev"}
    installed = re.search(r'pip install "\.\[([a-z,]+)\]"', dockerfile)
    assert installed and set(installed.group(1).split(",")) == extras  # every runtime extra: every option works


def server_settings(service: dict) -> dict[str, str]:
    """The server service's job-runner switch and database pool with their defaults, for running its
    command natively."""
    keys = ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION", *CONNECTIONS_PER_WORKER]
    return {key: interpolate(service["environment"][key], {}) for key in keys}


def _published(service: dict, env: dict[str, str]) -> list[str]:
    """The host addresses a service's ports are published on, as compose reads them."""
    return [interpolate(port, env).rsplit(":", 2)[0] if interpolate(port, env).count(":") == 2 else "0.0.0.0"
            for port in service.get("ports", [])]


def test_only_the_server_with_authentication_can_be_reached_from_other_machines() -> None:
    services = compose()["services"]
    everything = {"MLFLOW_BIND_ADDRESS": "0.0.0.0", "MLFLOW_PORT": "5000"}
    for name, service in services.items():
        default = _published(service, {})
        assert all(address == "127.0.0.1" for address in default), f"{name} is published on {default} by default"
        exposed = _published(service, everything)
        if any(address != "127.0.0.1" for address in exposed):
            assert name == "mlflow-auth" and service["entrypoint"][-2:] == ["--app-name", "basic-auth"], name
    assert _published(services["mlflow-auth"], everything) == ["0.0.0.0"]  # when the team asks for it


def _preflight(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ROOT / "docker" / "preflight.sh")], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30)


def test_the_stack_refuses_to_start_with_an_empty_placeholder_or_short_secret() -> None:
    services = compose()["services"]
    assert services["preflight"]["entrypoint"] == ["sh", "/preflight.sh"]
    for name in ("postgres", "minio"):  # everything else waits for these
        assert services[name]["depends_on"]["preflight"]["condition"] == "service_completed_successfully"
    example = dict(re.findall(r"^(\w+)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.M))
    copied = _preflight(example)  # docker/.env.example copied as it is
    assert copied.returncode == 1 and "POSTGRES_PASSWORD is empty or a placeholder" in copied.stderr
    for weak, message in (("change-me", "placeholder"), ("Postgres2024!", "placeholder"), ("x7Kq2", "shorter")):
        refused = _preflight({"POSTGRES_PASSWORD": weak})
        assert refused.returncode == 1 and message in refused.stderr, weak
    strong = "7f3a9c1e5b2d8a4f"
    assert _preflight({"POSTGRES_PASSWORD": strong}).returncode == 0
    weak_admin = _preflight({"POSTGRES_PASSWORD": strong, "MLFLOW_AUTH_ADMIN_PASSWORD": "change-me-three"})
    assert weak_admin.returncode == 1 and "MLFLOW_AUTH_ADMIN_PASSWORD" in weak_admin.stderr
    short_key = _preflight({"POSTGRES_PASSWORD": strong, "MLFLOW_FLASK_SERVER_SECRET_KEY": "a1b2c3d4e5f6"})
    assert short_key.returncode == 1 and "shorter than 32" in short_key.stderr
    for key, value in services["preflight"]["environment"].items():  # it sees every secret the stack uses
        assert value == "${" + key + ":-}"


def test_the_tuner_takes_its_storage_from_the_environment_not_a_flag() -> None:
    tuner = compose()["services"]["tuner"]
    assert tuner["entrypoint"] == ["python", "-m", "cifar_mlflow.tune"]
    assert "--storage" not in " ".join(tuner["entrypoint"] + tuner["command"])


def test_no_secret_is_committed_and_every_variable_is_documented() -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    documented = set(re.findall(r"^#?\s*(\w+)=", ENV_EXAMPLE.read_text(), flags=re.M))
    assert used <= documented, f"not in docker/.env.example: {sorted(used - documented)}"
    assert "${POSTGRES_PASSWORD:?" in text  # the stack refuses to start without a password
    for service in compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key or "SECRET" in key:
                assert str(value).startswith("${"), f"{key} has a literal value"  # only from docker/.env
    assert "docker/.env" in (ROOT / ".gitignore").read_text()
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "USER trainer" in dockerfile and "PASSWORD" not in dockerfile


@pytest.fixture(scope="module")
def compose_server(postgres_url, tmp_path_factory):
    """The compose file's `mlflow` command, run natively against the test PostgreSQL."""
    host_port = postgres_url.split("@")[1].split("/")[0]  # 127.0.0.1:PORT
    port = free_port()
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    env = {"POSTGRES_USER": "test", "POSTGRES_PASSWORD": "", "MLFLOW_DB": "mlflow", "OPTUNA_DB": "optuna",
           "MLFLOW_PORT": str(port)}
    command = [interpolate(arg, env) for arg in compose()["services"]["mlflow"]["entrypoint"]]
    replacements = {"0.0.0.0": "127.0.0.1", "5000": str(port), "/mlartifacts": str(artifacts)}
    command = [replacements.get(arg, arg).replace("@postgres:5432", f"@{host_port}") for arg in command]
    command[0] = mlflow_bin()
    with running_server(command, f"http://127.0.0.1:{port}", artifacts.parent / "compose-server.log",
                        env=run_env(**server_settings(compose()["services"]["mlflow"]))) as uri:
        yield uri, artifacts


@pytest.mark.faults  # three processes against one server and PostgreSQL: a concurrency test (make test-faults)
def test_training_and_two_tuning_workers_against_the_compose_server(compose_server, postgres_url, imagefolder,
                                                                     tmp_path) -> None:
    uri, artifacts = compose_server
    env = run_env(MLFLOW_TRACKING_URI=uri)
    common = ["--dataset", "imagefolder", "--data-dir", str(imagefolder), "--arch", "lenet", "--epochs", "2",
              "--batch-size", "16", "--no-progress", "--experiment-name", "team"]
    train = subprocess.run([sys.executable, "-m", "cifar_mlflow.train", *common], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    tune = [sys.executable, "-m", "cifar_mlflow.tune", *common, "--trials", "2", "--study-name", "team-study",
            "--storage", postgres_url, "--pruner", "none"]
    workers = [subprocess.Popen(tune, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        err = worker.communicate(timeout=600)[1]
        assert worker.returncode == 0, err[-3000:]

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("team")
    runs = client.search_runs([experiment.experiment_id])
    (trained,) = [r for r in runs if r.info.run_name == "lenet-sgd-lr0.05-e2-s0"]
    assert trained.info.status == "FINISHED" and trained.info.artifact_uri.startswith("mlflow-artifacts:")
    assert sorted(m.step for m in client.get_metric_history(trained.info.run_id, "val_acc")) == [1, 2]
    assert (artifacts / experiment.experiment_id / trained.info.run_id / "artifacts" / "plots" /
            "confusion_matrix.png").is_file()  # proxied: the server wrote it into its artifact store
    assert mlflow.pytorch.load_model(f"runs:/{trained.info.run_id}/model") is not None
    (parent,) = [r for r in runs if r.data.tags.get("cifar_mlflow.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    study = optuna.load_study(study_name="team-study", storage=postgres_url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert sorted(int(c.data.params["trial_number"]) for c in children) == [0, 1, 2, 3]
