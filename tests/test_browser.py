"""The MLflow UI as users see it: its compare page for two runs, in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import urllib.parse

import pytest
from mlflow.tracking import MlflowClient

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def wait_for_texts(page, texts: list[str], timeout_ms: int = 60_000) -> None:
    """Wait until the page shows every one of `texts`: the UI fills tables in several fetches (a run's id
    stands where its name will be until the name has arrived)."""
    page.wait_for_function("texts => texts.every(t => document.body.innerText.includes(t))", arg=texts,
                           timeout=timeout_ms)


def compare_page_url(server: str, run_ids: list[str], experiment_id: str) -> str:
    return (f"{server}/#/compare-runs?runs={urllib.parse.quote(json.dumps(run_ids))}"
            f"&experiments={urllib.parse.quote(json.dumps([experiment_id]))}")


def test_mlflow_compare_page_shows_both_runs_and_val_acc(two_runs, mlflow_server, tmp_path) -> None:
    if not shutil.which(CHROMIUM):
        print("SKIPPED: Chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    client = MlflowClient(mlflow_server)
    experiment_id = client.get_run(two_runs[0]).info.experiment_id
    names = [client.get_run(run_id).info.run_name for run_id in two_runs]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(compare_page_url(mlflow_server, list(two_runs), experiment_id))
            page.wait_for_selector("text=val_acc", timeout=90_000)
            wait_for_texts(page, names)
            text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "compare.png"))
        finally:
            browser.close()
    assert "Comparing 2 Runs" in text
    for name in names:
        assert name in text
    assert "val_acc" in text
    assert (tmp_path / "compare.png").stat().st_size > 20_000
