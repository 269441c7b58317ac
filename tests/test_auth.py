"""The compose stack's basic-auth server, run natively: 401, 403, no default password, no leaked secrets."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.server import get_app_client
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, free_port, mlflow_bin, run_env, running_server
from tests.test_deployment import compose, interpolate, server_settings

ADMIN, ADMIN_PASSWORD = "ci-admin-7f3a", "Adm1n-Pw-91c2e"
SECRETS = {"MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-key-for-tests"}


def auth_server_command(tmp: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The `mlflow-auth` service's command and environment, with a test database and config."""
    ini = (ROOT / "docker" / "basic_auth.ini").read_text()
    ini = ini.replace("sqlite:////mlauth/basic_auth.db", f"sqlite:///{tmp / 'auth.db'}")
    ini = ini.replace("admin_username = admin", f"admin_username = {ADMIN}")
    (tmp / "basic_auth.ini").write_text(ini)
    service = compose()["services"]["mlflow-auth"]
    env = {"MLFLOW_PORT": str(port)}
    command = [interpolate(arg, env) for arg in service["entrypoint"]]
    backend = command.index("--backend-store-uri") + 1
    command[backend] = f"sqlite:///{tmp / 'mlflow.db'}"  # the auth behaviour does not depend on the store
    replacements = {"0.0.0.0": "127.0.0.1", "5000": str(port), "/mlartifacts": str(tmp / "artifacts")}
    command = [replacements.get(arg, arg) for arg in command]
    command[0] = mlflow_bin()
    assert service["environment"]["MLFLOW_AUTH_CONFIG_PATH"]  # the compose service points at the ini
    return command, run_env(MLFLOW_AUTH_CONFIG_PATH=str(tmp / "basic_auth.ini"), **server_settings(service),
                            **SECRETS)


def test_compose_auth_service_is_the_same_server_with_the_auth_app() -> None:
    services = compose()["services"]
    assert services["mlflow-auth"]["entrypoint"] == services["mlflow"]["entrypoint"] + ["--app-name", "basic-auth"]
    assert services["mlflow-auth"]["profiles"] == ["auth"]


def test_server_refuses_to_start_without_an_admin_password(tmp_path) -> None:
    command, env = auth_server_command(tmp_path, free_port())
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ships no default admin password" in proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth-server")
    port = free_port()
    command, env = auth_server_command(tmp, port)
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    with running_server(command, f"http://127.0.0.1:{port}", tmp / "server.log", env=env) as uri:
        yield uri


def status_of(uri: str, path: str, user: str | None = None, password: str | None = None,
              body: dict | None = None) -> int:
    request = urllib.request.Request(f"{uri}{path}", data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_credentials_401_403_and_nothing_leaks(auth_server, imagefolder, tmp_path) -> None:
    search = "/api/2.0/mlflow/experiments/search?max_results=10"
    assert status_of(auth_server, search) == 401
    assert status_of(auth_server, search, ADMIN, "wrong-password") == 401
    assert status_of(auth_server, search, ADMIN, ADMIN_PASSWORD) == 200

    env = run_env(MLFLOW_TRACKING_URI=auth_server, MLFLOW_TRACKING_USERNAME=ADMIN,
                  MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    proc = subprocess.run([sys.executable, "-m", "cifar_mlflow.train", "--dataset", "imagefolder", "--data-dir",
                           str(imagefolder), "--arch", "lenet", "--epochs", "1", "--batch-size", "16", "--no-progress",
                           "--experiment-name", "private"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    import os

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN, ADMIN_PASSWORD
    try:
        client = MlflowClient(auth_server)
        experiment = client.get_experiment_by_name("private")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED"
        # A user with no permission on the experiment may read (default READ) but not write: 403.
        get_app_client("basic-auth", tracking_uri=auth_server).create_user("bob", "Bob-Pw-5521x")
        create_run = {"experiment_id": experiment.experiment_id}
        assert status_of(auth_server, "/api/2.0/mlflow/runs/create", "bob", "Bob-Pw-5521x", create_run) == 403
        assert status_of(auth_server, "/api/2.0/mlflow/runs/create", ADMIN, ADMIN_PASSWORD, create_run) == 200

        # The password is nowhere in what the run logged; the user name only as the run's owner,
        # which the auth server itself records in `mlflow.user`.
        assert run.data.tags["mlflow.user"] == ADMIN
        tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.user"}
        logged = json.dumps({"params": run.data.params, "tags": tags})
        client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts"))
        contents = b"".join(p.read_bytes() for p in (tmp_path / "artifacts").rglob("*") if p.is_file())
        assert contents  # the plots, reports and config were downloaded and searched
        for secret in (ADMIN, ADMIN_PASSWORD):
            assert secret not in logged and secret.encode() not in contents
        assert ADMIN_PASSWORD not in json.dumps(run.data.tags)
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
