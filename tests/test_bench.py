"""`python -m cifar_mlflow.bench` on the CPU with tiny sizes: the tables, the JSON, logging to MLflow,
and bad input. (Its figures are measured by docs/benchmarks.md, never asserted as timings here.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, run_env

TINY = ["--device", "cpu", "--dataset", "synthetic", "--max-train-samples", "600", "--max-eval-samples", "100",
        "--batch-size", "32", "--steps", "3",
        "--warmup-steps", "1", "--num-workers", "1", "--tracking-samples", "128", "--tracking-epochs", "1",
        "--tracking-repeats", "1", "--no-progress"]


def bench(*argv: str, cwd, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifar_mlflow.bench", *argv], cwd=cwd, env=run_env(**env),
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def bench_result(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    store = f"sqlite:///{workdir / 'results.db'}"
    # The sections a CPU runs by default (time_to_accuracy has a test of its own), logged to a live server.
    proc = bench(*TINY, "--archs", "lenet", "mlp", "--sections", "training", "data_path", "tracking",
                 "--json", "bench.json", "--log", cwd=workdir, MLFLOW_TRACKING_URI=store)  # the store a user set
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, json.loads((workdir / "bench.json").read_text()), store


def test_json_has_a_row_per_arch_with_the_ratio_of_the_two_pipelines(bench_result) -> None:
    _, results, _ = bench_result
    rows = results["rows"]
    assert [r["arch"] for r in rows] == ["lenet", "mlp"]
    for row in rows:
        assert {"arch", "device", "ours_images_per_s", "baseline_images_per_s", "speedup"} <= set(row)
        assert row["device"] == "cpu" and row["ours_images_per_s"] > 0 and row["baseline_images_per_s"] > 0
        assert row["speedup"] == pytest.approx(row["ours_images_per_s"] / row["baseline_images_per_s"], rel=0.01)
        # the model's own pace, and what it leaves for a data path to gain
        assert row["model_alone_images_per_s"] > 0
        assert row["ours_share_of_model_alone"] == pytest.approx(
            row["ours_images_per_s"] / row["model_alone_images_per_s"], rel=0.01)
        assert row["speedup_bound"] == pytest.approx(
            row["model_alone_images_per_s"] / row["baseline_images_per_s"], rel=0.01)
    path = results["data_path"]
    assert path["ours_images_per_s"] > 0 and path["baseline_images_per_s"] > 0
    tracking = results["tracking_overhead"]
    assert tracking["wall_s_logging_on"] > 0 and tracking["wall_s_logging_off"] > 0
    assert tracking["ratio"] == pytest.approx(tracking["wall_s_logging_on"] / tracking["wall_s_logging_off"], rel=0.01)
    assert tracking["store"] == "server"
    assert results["machine"]["cpu_cores"] >= 1 and results["date"] and "cifar_mlflow.bench" in results["command"]


def test_markdown_tables_on_stdout(bench_result) -> None:
    proc, results, _ = bench_result
    out = proc.stdout
    assert ("| arch | device | precision | ours (img/s) | DataLoader + PIL (img/s) | speedup "
            "| model alone (img/s) | ours, of model alone | speedup bound |") in out
    lenet = results["rows"][0]
    assert lenet["precision"] in ("bf16", "fp32")  # as the training command picks it on this CPU
    assert (f"| lenet | cpu | {lenet['precision']} | {lenet['ours_images_per_s']:,.0f} "
            f"| {lenet['baseline_images_per_s']:,.0f} | {lenet['speedup']:.2f}x "
            f"| {lenet['model_alone_images_per_s']:,.0f} | {lenet['ours_share_of_model_alone']:.0%} "
            f"| {lenet['speedup_bound']:.2f}x |") in out
    assert "### Data path alone" in out and "### Tracking overhead" in out and "live `mlflow server`" in out
    assert "not measured: GPU only: not run on the CPU unless --sections names time_to_accuracy" in out


def test_logged_as_a_finished_benchmark_run(bench_result) -> None:
    _, results, store = bench_result
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("benchmarks").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["cifar_mlflow.kind"] == "benchmark"
    assert run.data.metrics["speedup.lenet"] == pytest.approx(results["rows"][0]["speedup"])
    assert run.data.metrics["speedup_bound.mlp"] == pytest.approx(results["rows"][1]["speedup_bound"])
    assert "tracking_overhead.ratio" in run.data.metrics and run.data.params["archs"] == "lenet mlp"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"benchmark.md", "benchmark.json"}


def test_time_to_accuracy_logs_the_fast_recipe_to_an_embedded_store_and_leaves_nothing_behind(tmp_path) -> None:
    # What a machine with only mlflow-skinny (no `mlflow server`) can run: the GPU machines' case.
    proc = bench(*TINY, "--sections", "time_to_accuracy", "--seeds", "1", "--fast-epochs", "1",
                 "--target-accuracy", "0.01", "--tracking-store", "sqlite", "--json", "bench.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tta = json.loads((tmp_path / "bench.json").read_text())["time_to_accuracy"]
    assert tta["recipe"] == "fast" and tta["seeds"] == 1 and tta["epochs"] == 1 and tta["mlflow_logging"]
    assert 0 <= tta["test_acc_mean"] <= 1 and tta["train_s_mean"] > 0
    assert tta["reached"] is True and tta["target_accuracy"] == 0.01  # a target below every run is reached
    assert "### Time to 1% (the fast recipe, MLflow logging on)" in proc.stdout
    assert "note: measured on `synthetic` data" in proc.stdout and "not the original CIFAR-10" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # no mlruns/ or mlflow.db where it ran


def test_a_server_that_does_not_start_ends_the_benchmark_before_anything_is_measured(tmp_path) -> None:
    # An install whose `mlflow server` cannot run (as mlflow-skinny's): this sitecustomize makes the
    # real server process exit at once; the benchmark itself runs as usual.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif sys.argv[1:2] == ['server']:\n"
        "    sys.stderr.write('mlflow server: not in this install\\n')\n    sys.stderr.flush()\n    os._exit(1)\n")
    work = tmp_path / "work"
    work.mkdir()
    proc = bench(*[a for a in TINY if a != "--no-progress"], "--archs", "lenet", "--sections", "training",
                 "tracking", "--json", "bench.json", cwd=work, PYTHONPATH=f"{site}{os.pathsep}{ROOT}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    # One line, no progress bar before it: the training section never started.
    assert proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith("error: mlflow server did not start (mlflow server: not in this install)")
    assert "--tracking-store sqlite" in proc.stderr
    assert proc.stdout == "" and list(work.iterdir()) == []


def test_help_names_the_sections_and_their_options(tmp_path) -> None:
    proc = bench("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--tracking-repeats" in proc.stdout and "time_to_accuracy" in proc.stdout
    assert "--tracking-store" in proc.stdout and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["--archs", "nonet"], "unknown architecture 'nonet'"),
    (["--sections", "speed"], "unknown section 'speed'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--json", "missing/dir/out.json"], "folder missing/dir does not exist"),
    (["--dataset", "cifar10", "--data-dir", "nowhere"], "cifar10"),
    (["--steps", "0"], "steps must be at least 1"),
])
def test_bad_input_exits_2_before_anything_is_measured(argv, message, tmp_path, monkeypatch, capsys) -> None:
    # In this process (the command's exit status is what main returns; tests/test_startup.py runs the
    # real command on bad input), which saves a process start for each case.
    from cifar_mlflow.bench.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["--device", "cpu", *argv]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err[-2000:]
    assert out == "" and list(tmp_path.iterdir()) == []


def test_the_cpu_default_runs_every_section_but_time_to_accuracy() -> None:
    from cifar_mlflow.bench.options import SECTIONS, BenchConfig, resolve_bench_config, section_list

    on_cpu = resolve_bench_config(BenchConfig(), on_cuda=False)  # no --sections: the per-device default
    on_gpu = resolve_bench_config(BenchConfig(), on_cuda=True)
    assert section_list(on_cpu) == [s for s in SECTIONS if s != "time_to_accuracy"]
    assert section_list(on_gpu) == list(SECTIONS)
    assert (on_cpu.steps, on_cpu.tracking_arch, on_cpu.tracking_samples) == (20, "cnn_small", 5000)


def test_the_tracking_table_names_the_store_it_measured() -> None:
    from cifar_mlflow.bench.tables import markdown_tables

    tracking = {"arch": "mlp", "epochs": 1, "repeats": 1, "wall_s_logging_off": 1.0, "wall_s_logging_on": 1.1,
                "overhead_percent": 10.0, "run_start_and_end_logging_s": 2.0}
    results = {"machine": {"platform": "Linux", "cpu_cores": 2, "torch": "2"}, "date": "2026-12-01",
               "command": "python -m cifar_mlflow.bench", "target_accuracy": 0.94}
    for store, said in [("sqlite", "MLflow's embedded SQLite store"), ("server", "live `mlflow server` on loopback")]:
        table = markdown_tables({**results, "tracking_overhead": {**tracking, "store": store}})
        assert f"### Tracking overhead (mlp, 1 epochs, median of 1, {said})" in table
