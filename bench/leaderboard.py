"""The leaderboard: tables, figures and a static page rebuilt from the records under `results/runs/`.

`build(results)` reads every alignment run record and every `bench invert` result under
`results/runs/` and writes `leaderboard.md`, `leaderboard.csv`, `figures/*.png`, a self-contained
`index.html` (sortable table, figures embedded, no network) and `leaderboard.json`, a manifest of
the SHA256 of every record it used and every file it wrote. All outputs are pure functions of the
records (sorted inputs, fixed number formats, figures without dates), so `check(results)` rebuilds
into a temporary directory and names every record added, removed or changed since the manifest,
every output whose bytes differ and every file under `figures/` a rebuild does not produce (a build
deletes those).
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path

import pandas as pd

from bench.figures import (
    frontier,
    inversion_error_vs_nfe,
    inversion_time_per_image,
    proxy_vs_oracle,
    sample_grid,
    win_rates,
)
from bench.records import RecordError, write_json_atomic, write_text_atomic
from bench.report import (
    comparison_table,
    directions,
    display_table,
    find_records,
    inversion_table,
    load_records,
    three_significant,
)
from metrics.weights import sha256_file

MANIFEST = "leaderboard.json"
PROXIES = ("toy-pickscore", "toy-clip")  # proxy scorers plotted against the oracle where both were recorded


def _inversion_results(paths: list[Path], *, skip_bad: bool = False) -> list[tuple[Path, dict]]:
    """Every `bench invert` result at or under `paths`; a corrupt one raises RecordError naming it unless `skip_bad`."""
    files = [f for p in map(Path, paths) for f in (sorted(p.rglob("invert.json")) if p.is_dir() else
                                                   [p] if p.name == "invert.json" else [])]
    out = []
    for path in files:
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            if skip_bad:
                continue
            raise RecordError(f"inversion result {path} is corrupt ({err}); pass --skip-bad to leave it out") from err
        out.append((path, result))
    return out


def figures_for(records: list[dict], inversions: list[tuple[Path, dict]], out: Path, fmt: str = "png") -> list[Path]:
    """Every figure the records support: per suite the frontier, win rates, proxy vs oracle and the
    sample grid; per `bench invert` result its error-vs-NFE and time-per-image charts."""
    written = []
    for suite in sorted({r["suite"] for r in records}):
        suite_records = [r for r in records if r["suite"] == suite]
        table = comparison_table(suite_records)
        metric = suite_records[0]["config"]["metrics"][0]
        if (table["method"] != "base").any():
            written.append(frontier(table, metric, out / f"{suite}-frontier.{fmt}"))
            if f"{metric}_win" in table:
                written.append(win_rates(table, metric, out / f"{suite}-win-rates.{fmt}"))
            for proxy in PROXIES:
                if f"{proxy}_delta" in table and f"{metric}_delta" in table and proxy != metric:
                    written.append(proxy_vs_oracle(table, proxy, metric, out / f"{suite}-{proxy}-vs-{metric}.{fmt}"))
        if any(r.get("samples", {}).get("png_base64") for r in suite_records):
            written.append(sample_grid(suite_records, out / f"{suite}-samples.{fmt}"))
    for path, result in inversions:
        stem = path.parent.name
        written.append(inversion_error_vs_nfe(result["records"], out / f"inversion-{stem}-error-vs-nfe.{fmt}"))
        written.append(inversion_time_per_image(result["records"], out / f"inversion-{stem}-time.{fmt}"))
    return written


def build_figures(paths: list[Path], out: Path, fmt: str = "png", *, skip_bad: bool = False) -> list[Path]:
    """`bench figures`: figures from the run records and `bench invert` results under `paths`."""
    records = [r for _, r in load_records(find_records(paths), skip_bad=skip_bad)]
    inversions = _inversion_results(paths, skip_bad=skip_bad)
    return figures_for(records, inversions, Path(out), fmt)


def _html(sections: list[tuple[str, pd.DataFrame]], figures: list[Path], n_records: int) -> str:
    tables = []
    for title, df in sections:
        head = "".join(f"<th onclick=\"sortTable(this)\">{html.escape(str(c))}</th>" for c in df.columns)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                       for row in df.itertuples(index=False))
        tables.append(f"<h2>{html.escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    images = "".join(
        f"<figure><img alt=\"{html.escape(p.stem)}\" src=\"data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}\">"
        f"<figcaption>{html.escape(p.stem)}</figcaption></figure>" for p in figures)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diffusion-align-bench leaderboard</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; font-size: 13px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }}
th {{ cursor: pointer; background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }} img {{ max-width: 520px; }}
</style></head><body>
<h1>diffusion-align-bench leaderboard</h1>
<p>Rebuilt by <code>bench leaderboard</code> from {n_records} run records. Every method of a suite trained under the
same compute budget; 95% confidence intervals from a bootstrap over training seeds, then prompts; win rates and
changes are paired with the base model on the same prompts and sampling seeds. Click a column header to sort.</p>
{"".join(tables)}
<h2>Figures</h2>
{images}
<script>
function sortTable(th) {{
  const table = th.closest("table"), body = table.tBodies[0], col = Array.from(th.parentNode.children).indexOf(th);
  const asc = th.dataset.asc !== "true"; th.dataset.asc = asc;
  const key = cell => {{ const v = parseFloat(cell.textContent.replace("**", "")); return isNaN(v) ? cell.textContent : v; }};
  Array.from(body.rows).sort((a, b) => {{
    const x = key(a.cells[col]), y = key(b.cells[col]);
    return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
  }}).forEach(row => body.appendChild(row));
}}
</script>
</body></html>
"""


def build(results: Path, out: Path | None = None, *, skip_bad: bool = False, progress: bool = False) -> dict:
    """Write every leaderboard output for the records under `results/runs` into `out` (default `results`)."""
    results, out = Path(results), Path(out or results)
    runs = results / "runs"
    paths = find_records([runs]) if runs.exists() else []
    loaded = load_records(paths, skip_bad=skip_bad, progress=progress)
    records = [r for _, r in loaded]
    inversions = _inversion_results([runs], skip_bad=skip_bad) if runs.exists() else []
    if not records and not inversions:  # e.g. the wrong --results: nothing is overwritten or deleted
        raise RecordError(f"no run records or inversion results under {runs}; is {results} the results directory?")
    figures_dir = out / "figures"
    sections, md = [], ["# Leaderboard", "", f"Rebuilt by `bench leaderboard` from {len(records)} run records under "
                        "`results/runs/`. 95% CIs from a bootstrap over training seeds, then prompts; win rate and Δ "
                        "paired with the base model on the same prompts and sampling seeds.", ""]
    tables = []
    for suite in sorted({r["suite"] for r in records}):
        suite_records = [r for r in records if r["suite"] == suite]
        table = comparison_table(suite_records)
        tables.append(table)
        higher = directions(suite_records)
        sections.append((f"suite: {suite}", display_table(table, higher, "plain")))
        md += [f"## Suite `{suite}`", "", display_table(table, higher, "md").to_markdown(index=False), ""]
    for path, result in inversions:
        title = f"inversion: {path.parent.name}, {result['config']['steps']} steps, {result['config']['dtype']}"
        shown = three_significant(inversion_table(result["records"]))
        sections.append((title, shown))
        md += [f"## {title}", "", shown.to_markdown(index=False), ""]
    written = figures_for(records, inversions, figures_dir)
    for stale in _figure_files(figures_dir) - set(written):  # e.g. of a suite whose records were removed
        stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "leaderboard.md", "\n".join(md))
    csv = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    write_text_atomic(out / "leaderboard.csv", csv.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(out / "index.html", _html(sections, sorted(written), len(records)))
    outputs = [out / "leaderboard.md", out / "leaderboard.csv", out / "index.html", *sorted(written)]
    manifest = {
        "records": {p.relative_to(results).as_posix(): sha256_file(p) for p, _ in loaded}
        | {p.relative_to(results).as_posix(): sha256_file(p) for p, _ in inversions},
        "outputs": {p.relative_to(out).as_posix(): sha256_file(p) for p in outputs},
    }
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _figure_files(figures_dir: Path) -> set[Path]:
    return {p for p in figures_dir.glob("*") if p.suffix in (".png", ".pdf", ".svg")} if figures_dir.is_dir() else set()


def check(results: Path, *, skip_bad: bool = False) -> list[str]:
    """What differs between the committed leaderboard and one rebuilt from the records (empty: up to date)."""
    results = Path(results)
    committed_path = results / MANIFEST
    if not committed_path.exists():
        return [f"{committed_path} is missing: run `bench leaderboard`"]
    try:
        committed = json.loads(committed_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return [f"{committed_path} is unreadable ({err}): run `bench leaderboard`"]
    with tempfile.TemporaryDirectory() as tmp:
        fresh = build(results, Path(tmp), skip_bad=skip_bad)
    problems = []
    for name in sorted(set(committed["records"]) | set(fresh["records"])):
        if name not in fresh["records"]:
            problems.append(f"record {name} is in the leaderboard but missing from {results}")
        elif name not in committed["records"]:
            problems.append(f"record {name} is not in the committed leaderboard")
        elif committed["records"][name] != fresh["records"][name]:
            problems.append(f"record {name} changed since the leaderboard was built")
    for name in sorted(set(committed["outputs"]) | set(fresh["outputs"])):
        on_disk = results / name
        if not on_disk.exists():
            problems.append(f"output {name} is missing")
        elif fresh["outputs"].get(name) != sha256_file(on_disk):
            problems.append(f"output {name} is stale (differs from a rebuild)")
    for path in sorted(_figure_files(results / "figures")):
        name = path.relative_to(results).as_posix()
        if name not in fresh["outputs"]:
            problems.append(f"output {name} is not produced by a rebuild (run `bench leaderboard` to remove it)")
    return problems
