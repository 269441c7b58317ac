"""`python -m cifar_mlflow.compare`: a report comparing runs, beyond what the MLflow UI draws.

Exit status: 0 done, 2 bad input (an unknown run or experiment, an empty selection; nothing created).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cifar_mlflow.arguments import add_config_arguments, collect_values, program_name
from cifar_mlflow.config import _field, check_choices
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.redaction import protect_console, redact

FORMATS = ("html", "csv", "md")


@dataclass
class CompareConfig:
    """Which runs to compare and where the report goes."""

    runs: str | None = _field(None, "run ids to compare (several values, or one separated by spaces or commas)",
                              nargs="+")
    experiment: str | None = _field(None, "compare runs of this experiment (with --filter, --top)")
    filter: str | None = _field(None, "MLflow search filter, e.g. \"params.arch = 'cnn'\"")
    top: int | None = _field(None, "only the best K runs by --metric")
    metric: str = _field("test_acc", "metric ranking runs for --top (lower is better for *loss*)")
    study: str | None = _field(None, "compare the trials of this tuning study")
    format: str = _field("html", "html: the report with its plots (written to --output, logged); csv or md: also "
                         "its table of runs (id, params that differ, final metrics) as CSV or a Markdown table, "
                         "printed and written as report.csv or report.md", choices=FORMATS)
    output: str | None = _field(None, "also write the report (report.html and its PNGs) to this folder")
    with_train: bool = _field(False, "draw training curves next to the validation curves")
    title: str | None = _field(None, "report title (default: Comparison of N runs)")
    tracking_uri: str | None = _field(None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                      "sqlite:///mlflow.db)")
    log_comparison: bool = _field(True, "log the report as a run tagged cifar_mlflow.kind=comparison")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("compare"),
        description="Compare runs: overlaid learning curves, a table of differing params and final metrics, "
                    "per-class accuracy, confusion-matrix differences, accuracy against size and speed. "
                    "Writes one self-contained HTML report and logs it to MLflow.",
        epilog="examples:\n  python -m cifar_mlflow.compare --runs RUN_A RUN_B\n"
               "  python -m cifar_mlflow.compare --experiment cifar10 --filter \"params.arch = 'cnn'\"\n"
               "  python -m cifar_mlflow.compare --experiment cifar10 --top 5 --metric test_acc --output report/\n"
               "  python -m cifar_mlflow.compare --study cnn-cifar10 --top 10",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, CompareConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    protect_console()
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per small CSV is noise
    workdir = Path(tempfile.mkdtemp(prefix="cifar_mlflow-compare-"))
    try:
        values, _ = collect_values(args, CompareConfig)
        config = CompareConfig(**values)
        run_ids = [r for r in re.split(r"[\s,]+", config.runs or "") if r]
        if not (run_ids or config.experiment or config.top or config.study):
            raise ConfigError("say which runs to compare: --runs ID ..., --experiment NAME, --top K or --study NAME")
        if config.top is not None and config.top < 1:
            raise ConfigError(f"top must be at least 1, got {config.top}")
        check_choices(config)
        # Imported once the options are checked: `--help` and bad input answer without loading MLflow and matplotlib.
        from cifar_mlflow.compare.report import build_report, table_text
        from cifar_mlflow.tracking import (
            check_tracking_server,
            fetch_run_records,
            log_comparison,
            select_runs,
            tracking_uri,
        )

        uri = tracking_uri(config.tracking_uri)
        check_tracking_server(uri)
        runs = select_runs(uri, run_ids=run_ids, experiment=config.experiment, filter_string=config.filter or "",
                           top=config.top, metric=config.metric, study=config.study)
        records = fetch_run_records(uri, runs, workdir)
        command = "python -m cifar_mlflow.compare " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        title = config.title or f"Comparison of {len(records)} runs"
        report = build_report(records, title=title, with_train=config.with_train, command=command)
        out = workdir / "report"
        out.mkdir()
        (out / "report.html").write_text(report.html)
        for name, png in report.pngs.items():
            (out / name).write_bytes(png)
        if config.format != "html":
            text = table_text(report.table, config.format)
            (out / f"report.{config.format}").write_text(text)
            print(text, end="")  # stdout: ready for `> table.md`; everything else goes to stderr
        if config.output:
            shutil.copytree(out, config.output, dirs_exist_ok=True)
            print(f"report written to {Path(config.output) / 'report.html'}", file=sys.stderr)
        if config.log_comparison:
            run_id = log_comparison(uri, runs[0].info.experiment_id, title, [r.info.run_id for r in runs], out)
            print(f"comparison logged as run {run_id} (artifacts: comparison/report.html)", file=sys.stderr)
    except ConfigError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
