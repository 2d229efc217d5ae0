"""The dashboard in a real browser: after a drift and a promotion (``test_loop``), Debian's headless Chromium
opens the page against the running stack and finds the drift marker, the new version and its gate decision.

The page draws itself from the registry's API and monitoring's history, so
only a browser shows that the two meet; the screenshot is for people.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import httpx
from bs4 import BeautifulSoup, Tag

from driftloop.cli.demo import DemoResult
from driftloop.cli.stack import Stack

REPO = Path(__file__).resolve().parents[2]
#: Where the latest screenshot stays after the test's temporary folder is gone (git-ignored).
SCREENSHOT = REPO / ".driftloop" / "screenshots" / "dashboard.png"
MODEL = "loan-approval"


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium, its profile in the test's folder; virtual time lets the page's fetches finish first."""
    binary = shutil.which("chromium")
    assert binary is not None, "Debian's chromium package is missing (apt-get install chromium; .ci/run installs it)"
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=15000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


def _one(scope: Tag, selector: str) -> Tag:
    found = scope.select_one(selector)
    assert found is not None, f"nothing matches {selector!r}"
    return found


async def check_dashboard(stack: Stack, result: DemoResult, tmp_path: Path) -> None:
    """The drift ``result`` saw, its model's new version and the gate's decision, as the page shows them."""
    assert result.drift_event is not None and result.promoted is not None and result.run is not None
    assert result.promoted.decision is not None
    drift_id = result.drift_event.event_id

    # The page reads monitoring's history; the drift the demo saw is there before the browser looks.
    history_url = f"{stack.children['monitoring'].url}/v1/models/{MODEL}/history"
    drifts: list[str] = []
    for _ in range(60):
        response = httpx.get(history_url, timeout=10.0)
        drifts = [d["event_id"] for d in response.json()["drifts"]] if response.status_code == 200 else []
        if drift_id in drifts:
            break
        await asyncio.sleep(0.5)
    assert drift_id in drifts

    page = f"{stack.children['registry'].url}/"
    dom = (await asyncio.to_thread(chromium, tmp_path, "--dump-dom", page)).stdout
    model = _one(BeautifulSoup(dom, "html.parser"), f'section[data-model="{MODEL}"]')

    marker = _one(model, f'[data-chart="accuracy"] [data-drift-marker="concept"][data-event-id="{drift_id}"]')
    assert marker["data-model-version"] == "1"
    assert model.select('[data-chart="accuracy"] [data-series="realized"][data-model-version="1"]')
    assert _one(model, "[data-champion]").get_text() == "v2"

    row = _one(model, 'table[data-table="versions"] tr[data-version="2"]')
    gate = _one(row, "[data-gate-decision]")
    assert gate["data-gate-decision"] == "passed"
    assert result.promoted.decision.reason in gate.get_text()
    assert _one(row, "[data-parent-version]")["data-parent-version"] == "1"
    assert _one(row, "[data-run-id]").get_text() == result.run.run_id
    assert _one(model, 'tr[data-version="1"] [data-gate-decision]')["data-gate-decision"] == "passed"

    shot = tmp_path / "dashboard.png"
    await asyncio.to_thread(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1400,1800", page)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
    print(f"dashboard screenshot: {SCREENSHOT}")
