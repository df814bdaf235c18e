"""The leaderboard page in headless Chromium (tox -e slow installs Debian's chromium), driven without a driver library.

The page runs its own self-test when opened as `index.html#selftest` (`bench.results.page`): it applies a filter and
checks the rows shown change, sorts by the metric's column both ways and checks the order follows the means, opens a
detail view, measures that the main table's box does not overflow, and writes the results as JSON into
`<pre id="selftest-result">`, which `--dump-dom` captures once `--virtual-time-budget` has let the script run. Console
messages and uncaught errors reach stderr with `--enable-logging=stderr --v=0`.

Headless Chromium will not lay a window out narrower than 500 CSS px (`--window-size=400,...` still gives a 500 px
viewport), so the phone-width check opens the page in a 400 px iframe of a small harness page; the framed page posts
its self-test result to the harness, which writes it into its own DOM.

Two pages are checked: the committed `results/index.html`, and one built from records made to look like a full run
(3 training seeds x 3 budgets, a labelled method), so the page is exercised beyond the records committed today.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow

RESULTS = Path(__file__).resolve().parent.parent / "results"
# No background networking: this machine refuses outside connections, and the page needs none.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HARNESS = """<!doctype html><html><body style="margin:0"><pre id="harness-result"></pre>
<iframe style="width:{width}px;height:1400px;border:0" src="{page}#selftest"></iframe>
<script>addEventListener("message", e => {{ document.getElementById("harness-result").textContent =
  JSON.stringify(e.data.selftest); }});</script></body></html>"""


def _chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed (tox -e slow installs Debian's chromium package)"
    return subprocess.run([binary, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args, url],
                          capture_output=True, text=True, timeout=120)


def _console_problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def self_test(page: Path, tmp_path: Path, width: int) -> tuple[dict, list[str]]:
    """The page's self-test result at a `width` px wide viewport, and the console messages and errors it logged."""
    args = ["--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", "--dump-dom"]
    if width >= 500:
        result = _chromium(tmp_path, page.as_uri() + "#selftest", f"--window-size={width},1000", *args)
        found = re.search(r'<pre id="selftest-result"[^>]*>(.*?)</pre>', result.stdout, re.S)
    else:  # narrower than a headless window can be: a framed page
        harness = tmp_path / f"harness-{width}.html"
        harness.write_text(HARNESS.format(width=width, page=page.as_uri()))
        result = _chromium(tmp_path, harness.as_uri(), "--window-size=600,1000", *args)
        found = re.search(r'<pre id="harness-result">(.*?)</pre>', result.stdout, re.S)
    assert found and found.group(1).strip(), f"no self-test result: {result.stdout[-1500:]} {result.stderr[-1500:]}"
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")), \
        _console_problems(result.stderr)


def _fabricated_runs(runs: Path, out: Path) -> None:
    """Records as a full run would leave them, from the committed ones: every method's first record at 3 budgets (its
    limit x 0.5, 1, 2) and training seeds 0-2 with shifted scores, plus the labelled run `uniform-t` (dpo-gamma-t with
    gamma = 1, or of the first method); the base model and the inversion results as committed."""
    from bench.core.records import INVERT, read_record
    from bench.results.report import find_records, load_records

    loaded = load_records(find_records([runs]))
    (out / "toy").mkdir(parents=True)
    first = {}
    for path, record in loaded:
        if record["method"] == "base":
            shutil.copy(path, out / "toy" / "base.json")
        else:
            first.setdefault(record["method"], record)
    source = first.get("dpo-gamma-t", next(iter(first.values())))
    labelled = {**first, "uniform-t": source}
    for label, record in labelled.items():
        for b, factor in enumerate((0.5, 1.0, 2.0)):
            for seed in (0, 1, 2):
                r = copy.deepcopy(record)
                r["method"], r["seed"] = label, seed
                if label != record["method"]:
                    entry = copy.deepcopy(r["config"]["methods"][record["method"]])
                    entry["algorithm"] = record["method"]
                    entry["config"]["gamma"] = 1.0
                    r["config"]["methods"][label] = entry
                r["budget"]["limit"] = record["budget"]["limit"] * factor
                r["budget"]["usage"]["nfe"] = int(record["budget"]["usage"]["nfe"] * factor)
                r["evaluation"]["scores"] = {name: [v + 0.03 * (b - 1) + 0.02 * seed * (i % 5 - 2) for i, v in enumerate(s)]
                                             for name, s in r["evaluation"]["scores"].items()}
                (out / "toy" / f"{label}-{r['budget']['limit']:g}{r['budget']['unit']}-s{seed}.json").write_text(json.dumps(r))
    for path in sorted(runs.rglob("invert.json")):
        read_record(path, INVERT)
        shutil.copytree(path.parent, out / path.parent.name)


@pytest.fixture(scope="module")
def full_run_page(tmp_path_factory) -> Path:
    from bench.results.leaderboard import build

    root = tmp_path_factory.mktemp("full-run")
    _fabricated_runs(RESULTS / "runs", root / "runs")
    build(root)
    return root / "index.html"


@pytest.fixture(params=["committed", "full-run"])
def page(request) -> Path:
    if request.param == "committed":
        assert (RESULTS / "index.html").exists(), "results/index.html is missing: run `bench leaderboard`"
        return RESULTS / "index.html"
    return request.getfixturevalue("full_run_page")


@pytest.mark.parametrize("width", [1400, 400])
def test_page_self_test_filters_sorts_and_fits(page, tmp_path, width):
    result, console = self_test(page, tmp_path, width)
    assert console == [] and result["errors"] == [], (console, result["errors"])  # loads without console errors
    checks = result["checks"]
    assert result["width"] == width
    assert checks["filter"]["ok"] and checks["filter"]["after"] != checks["filter"]["before"], checks["filter"]
    assert checks["sort"]["ok"], checks["sort"]  # by the mean, descending then ascending
    assert [o["asc"] for o in checks["sort"]["orders"]] == [False, True]
    assert checks["overflow"]["ok"], checks["overflow"]  # the main table fits its box, the page its window
    assert checks["detail"]["ok"] and checks["detail"]["curves"] >= 1 and checks["detail"]["images"] >= 2, checks["detail"]
    assert checks["charts"]["ok"], checks["charts"]
    assert result["ok"]


def test_full_run_page_shows_every_budget_and_seed(full_run_page):
    data = json.loads(re.search(r'<script type="application/json" id="page-data">(.*?)</script>',
                                full_run_page.read_text(), re.S).group(1))
    suite = data["suites"][0]
    assert len(suite["budgets"]) == 3 and "uniform-t" in suite["methods"]
    uniform = next(r for r in data["rows"] if r["method"] == "uniform-t")
    assert uniform["algorithm"] != "uniform-t" and uniform["seeds"] == 3 and len(uniform["runs"]) == 3


def test_committed_page_renders(tmp_path):
    """A screenshot at 1400 px is not blank, and the page the browser built shows the table and the charts."""
    shot = tmp_path / "page.png"
    result = _chromium(tmp_path, (RESULTS / "index.html").as_uri(), f"--screenshot={shot}", "--window-size=1400,1800",
                       "--virtual-time-budget=5000")
    assert shot.exists(), result.stderr[-2000:]
    pixels = torch.tensor(list(Image.open(shot).convert("L").getdata()), dtype=torch.float32)
    assert pixels.std() > 10  # not a blank page
    dom = _chromium(tmp_path, (RESULTS / "index.html").as_uri(), "--virtual-time-budget=5000", "--dump-dom").stdout
    assert dom.count('<tr data-id="') >= 2 and dom.count("<svg ") >= 2
    for method in ("base model", "dpo", "kto"):
        assert f">{method}</button>" in dom, method
