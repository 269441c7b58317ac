"""MLproject, python_env.yaml and conda.yaml stay in step with the config and pyproject.toml."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import gen_mlproject  # noqa: E402


def test_mlproject_and_its_environments_are_generated_from_the_config_and_pyproject() -> None:
    for name, make in gen_mlproject.FILES.items():
        assert (ROOT / name).read_text() == make(), f"{name} is out of date: run python tools/gen_mlproject.py"


def test_mlflow_reads_the_project_as_a_python_env_with_every_dependency() -> None:
    """What `mlflow run .` builds its virtualenv from, as MLflow itself loads the project."""
    from mlflow.projects._project_spec import load_project
    from mlflow.utils.environment import _PythonEnv

    project = load_project(str(ROOT))
    assert Path(project.env_config_path).name == "python_env.yaml"
    env = _PythonEnv.from_yaml(project.env_config_path)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(pyproject["dependencies"]) | set(pyproject["optional-dependencies"]["postgres"]) <= set(env.dependencies)
    assert not any("pytest" in d or "ruff" in d for d in env.dependencies)
    assert env.python == gen_mlproject.PYTHON and set(project._entry_points) == {"main", "tune", "compare", "from_run"}


def test_every_option_reaches_the_command_under_mlflow_run() -> None:
    """Declared parameters are in the command; the others arrive as `mlflow run` hands undeclared -P
    values on (`--name value`, underscores and all), and the command takes them."""
    import dataclasses

    from cifar_mlflow.config import TrainConfig
    from cifar_mlflow.train.cli import build_parser

    params = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["main"]["parameters"]
    assert {"dataset", "data_dir", "seed", "model_args"} <= set(params)
    assert not {"arch", "lr", "epochs", "device", "precision"} & set(params)  # resolved later: never "auto"
    parser = build_parser()
    for f in dataclasses.fields(TrainConfig):
        if f.name in params or f.name in gen_mlproject.EXCLUDED:
            continue
        value = "true" if f.name in ("lookahead", "muon_renorm") else "1"
        args = parser.parse_args([f"--{f.name}", value])
        assert getattr(args, f.name) == value, f.name


def test_conda_env_installs_the_project_dependencies() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d for d in conda["dependencies"] if isinstance(d, dict))["pip"]
    assert set(deps) <= set(pip) and "-e ." in pip


def test_options_doc_is_generated_from_the_config() -> None:
    import gen_options_doc

    assert (ROOT / "docs" / "options.md").read_text() == gen_options_doc.render(), \
        "docs/options.md is out of date: cd tools && python gen_options_doc.py"


def test_the_options_documented_as_changeable_on_resume_are_the_ones_allowed() -> None:
    import re

    from cifar_mlflow.train.cli import RESUME_OVERRIDABLE

    text = (ROOT / "docs" / "tracking.md").read_text()
    sentence = text.split("uploaded one (only ")[1].split(" may change")[0]
    documented = set(re.findall(r"`--([a-z-]+)`", sentence))
    assert documented == {name.replace("_", "-") for name in RESUME_OVERRIDABLE - {"resume"}}
