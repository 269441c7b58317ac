"""The benchmark's results as markdown tables, as docs/benchmarks.md shows them."""

from __future__ import annotations

from typing import Any


def markdown_tables(results: dict[str, Any]) -> str:
    """The figures as markdown, one table per section; sections not measured say why."""
    lines = [f"machine: {results['machine'].get('gpu') or results['machine']['platform']} "
             f"({results['machine']['cpu_cores']} CPU cores), torch {results['machine']['torch']}, "
             f"{results['date']}", f"command: `{results['command']}`", ""]
    rows = results.get("rows")
    if rows:
        lines += [f"### Training throughput (batch {rows[0]['batch_size']}, conventional pipeline with "
                  f"{rows[0]['baseline_num_workers']} DataLoader workers, best of {results['rounds']} turns each)", "",
                  "| arch | device | precision | ours (img/s) | DataLoader + PIL (img/s) | speedup "
                  "| model alone (img/s) | ours, of model alone | speedup bound |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['arch']} | {r['device']} | {r['precision']} | {r['ours_images_per_s']:,.0f} "
                  f"| {r['baseline_images_per_s']:,.0f} | {r['speedup']:.2f}x | {r['model_alone_images_per_s']:,.0f} "
                  f"| {r['ours_share_of_model_alone']:.0%} | {r['speedup_bound']:.2f}x |" for r in rows]
        lines += ["", "model alone: the same training steps on one batch already on the device, no data path; "
                  "speedup bound: model alone against DataLoader + PIL, the most any data path could gain", ""]
    path = results.get("data_path")
    if path:
        lines += ["### Data path alone (augmented images delivered on the device, no model)", "",
                  "| device | ours (img/s) | DataLoader + PIL (img/s) | speedup |", "|---|---:|---:|---:|",
                  f"| {path['device']} | {path['ours_images_per_s']:,.0f} | {path['baseline_images_per_s']:,.0f} "
                  f"| {path['speedup']:.2f}x |", ""]
    tracking = results.get("tracking_overhead")
    if tracking:
        store = ("MLflow's embedded SQLite store" if tracking.get("store") == "sqlite"
                 else "live `mlflow server` on loopback")
        lines += [f"### Tracking overhead ({tracking['arch']}, {tracking['epochs']} epochs, median of "
                  f"{tracking['repeats']}, {store})", "",
                  "| logging off (s) | logging on (s) | overhead | run start + end-of-run artifacts (s, once) |",
                  "|---:|---:|---:|---:|",
                  f"| {tracking['wall_s_logging_off']:.2f} | {tracking['wall_s_logging_on']:.2f} | "
                  f"{tracking['overhead_percent']:+.1f}% | {tracking['run_start_and_end_logging_s']:.2f} |", ""]
    tta = results.get("time_to_accuracy")
    lines.append(f"### Time to {results['target_accuracy']:.0%} (the fast recipe, MLflow logging on)")
    lines.append("")
    if tta and tta["dataset"] != "cifar10":
        lines += [f"note: measured on `{tta['dataset']}` data at {tta['data_source']}, not the original CIFAR-10 "
                  "files (a JPEG copy costs accuracy)", ""]
    if tta:
        compiled = tta["first_run_with_compilation_s"]
        lines += ["| data | seeds | epochs | test acc (mean, min-max) | reached | training s (mean) | "
                  "fit s incl. logging + eval (mean) | first run with compilation (s) |",
                  "|---|---:|---:|---|---|---:|---:|---:|",
                  f"| {tta['data_source']} | {tta['seeds']} | {tta['epochs']} | {tta['test_acc_mean']:.4f} "
                  f"({tta['test_acc_min']:.4f}-{tta['test_acc_max']:.4f}) | {'yes' if tta['reached'] else 'no'} | "
                  f"{tta['train_s_mean']:.2f} | {tta['fit_s_mean']:.2f} | "
                  f"{'not compiled' if compiled is None else f'{compiled:.1f}'} |"]
    else:
        lines.append(f"not measured: {results.get('time_to_accuracy_note', 'not asked for')}")
    return "\n".join(lines) + "\n"
