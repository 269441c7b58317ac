"""`python -m cifar_mlflow.compare` against a real `mlflow server`."""

from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient

from cifar_mlflow import compare

FIGURES = ["learning_curves.png", "per_class_accuracy.png", "pareto.png", "time.png"]


def test_compare_two_runs_writes_and_logs_the_report(two_runs, mlflow_server, tmp_path, capsys) -> None:
    a, b = two_runs
    out = tmp_path / "report"
    assert compare.main(["--runs", a, b, "--output", str(out), "--tracking-uri", mlflow_server]) == 0
    page = (out / "report.html").read_text()
    assert "cnn_small-adamw-lr0.0142-e2-s0" in page and "lenet-sgd-lr0.05-e2-s0" in page
    pair = f"confusion_difference_{a[:7]}_{b[:7]}.png"
    for figure in FIGURES + [pair]:
        assert (out / figure).stat().st_size > 5000
        assert f"alt='{figure[:-4]}'" in page
    assert len(re.findall(r"->.*?: \d+\.\d% -&gt; \d+\.\d%|-&gt;.*?: \d+\.\d% -&gt; \d+\.\d%", page)) >= 1

    client = MlflowClient(mlflow_server)
    logged_id = re.search(r"comparison logged as run (\w+)", capsys.readouterr().err).group(1)
    logged = client.get_run(logged_id)
    assert logged.info.experiment_id == client.get_run(a).info.experiment_id
    assert logged.data.tags["cifar_mlflow.kind"] == "comparison"
    assert logged.info.status == "FINISHED" and logged.data.tags["compared_runs"] == f"{a},{b}"
    artifacts = {x.path for x in client.list_artifacts(logged.info.run_id, "comparison")}
    assert {"comparison/report.html", f"comparison/{pair}"} | {f"comparison/{f}" for f in FIGURES} <= artifacts


@pytest.mark.parametrize("fmt", ["md", "csv"])
def test_the_table_as_markdown_or_csv_on_stdout_and_beside_the_report(fmt, two_runs, mlflow_server, tmp_path,
                                                                      capsys) -> None:
    import io

    import pandas as pd

    a, b = two_runs
    out = tmp_path / "report"
    assert compare.main(["--runs", a, b, "--format", fmt, "--output", str(out), "--tracking-uri", mlflow_server,
                         "--log-comparison", "false"]) == 0
    printed = capsys.readouterr().out
    assert (out / f"report.{fmt}").read_text() == printed and (out / "report.html").is_file()
    client = MlflowClient(mlflow_server)
    test_acc = {run_id: client.get_run(run_id).data.metrics["test_acc"] for run_id in (a, b)}
    if fmt == "csv":
        table = pd.read_csv(io.StringIO(printed))
        assert dict(zip(table["run_id"], table["test_acc"])) == pytest.approx(test_acc)
        assert {"arch", "optimizer"} <= set(table.columns)  # the params that differ
        return
    header, rule, *rows = printed.splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:2] == ["run", "run_id"] and "arch" in columns and "test_acc" in columns
    assert rule.startswith("|---|---|") and "---:" in rule  # numbers right-aligned
    assert len(rows) == 2
    for row in rows:
        cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
        assert cells["test_acc"] == f"{test_acc[cells['run_id']]:.4f}"


def test_selection_by_experiment_filter_and_top(two_runs, mlflow_server, tmp_path) -> None:
    out = tmp_path / "r"
    assert compare.main(["--experiment", "compare-test", "--filter", "params.arch = 'lenet'", "--output", str(out),
                         "--tracking-uri", mlflow_server, "--log-comparison", "false"]) == 0
    page = (out / "report.html").read_text()
    assert "lenet-sgd" in page and "cnn_small-adamw" not in page
    out = tmp_path / "top"
    client = MlflowClient(mlflow_server)
    best, worse = sorted((client.get_run(run_id) for run_id in two_runs), key=lambda r: r.data.metrics["test_loss"])
    assert best.data.metrics["test_loss"] < worse.data.metrics["test_loss"]
    assert compare.main(["--experiment", "compare-test", "--top", "1", "--metric", "test_loss", "--output", str(out),
                         "--tracking-uri", mlflow_server, "--log-comparison", "false"]) == 0
    page = (out / "report.html").read_text()  # the one best by test_loss; comparison runs are never picked
    assert best.info.run_name in page and worse.info.run_name not in page


@pytest.mark.parametrize("argv, message", [
    (["--runs", "0" * 32], "no run '00000000000000000000000000000000'"),
    (["--experiment", "no-such-experiment"], "no experiment 'no-such-experiment'"),
    (["--experiment", "compare-test", "--filter", "params.arch = 'resnet50'"], "no runs match"),
    ([], "say which runs to compare"),
])
def test_bad_selection_exits_2_and_logs_nothing(argv, message, two_runs, mlflow_server, capsys) -> None:
    client = MlflowClient(mlflow_server)
    before = len(client.search_runs([client.get_experiment_by_name("compare-test").experiment_id]))
    assert compare.main([*argv, "--tracking-uri", mlflow_server]) == 2
    assert message in capsys.readouterr().err
    assert len(client.search_runs([client.get_experiment_by_name("compare-test").experiment_id])) == before
