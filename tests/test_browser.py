"""The committed leaderboard page renders in headless Chromium (tox -e slow installs Debian's chromium)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow

PAGE = Path(__file__).resolve().parent.parent / "results" / "index.html"
# No background networking: this machine refuses outside connections, and the page needs none.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed (tox -e slow installs Debian's chromium package)"
    return subprocess.run([binary, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args, PAGE.as_uri()],
                          capture_output=True, text=True, timeout=120)


def test_leaderboard_page_renders_its_table(tmp_path):
    assert PAGE.exists(), "results/index.html is missing: run `bench leaderboard`"
    shot = tmp_path / "page.png"
    result = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1800")
    assert shot.exists(), result.stderr[-2000:]
    pixels = torch.tensor(list(Image.open(shot).convert("L").getdata()), dtype=torch.float32)
    assert pixels.std() > 10  # not a blank page
    dom = _chromium(tmp_path, "--dump-dom").stdout
    assert dom.count("<table>") >= 1 and dom.count("<tr>") >= 5
    for method in ("base", "dpo", "inpo", "kto"):
        assert f"<td>{method}</td>" in dom, method
    assert dom.count('src="data:image/png;base64,') >= 3
