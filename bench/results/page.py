"""The leaderboard page, `results/index.html`: charts first, filters, significance marked, every row down to its samples.

One self-contained HTML file (no network, no external script): the numbers it shows are computed here in Python, with
the leaderboard's own statistics (`bench.results.report.comparison_table` for each row's mean, 95% CI, and paired Δ
and win rate against the base model; `pairs_table` for every two methods of a suite at one budget, on every metric),
and embedded as one JSON document. The page's script only filters, sorts and draws; it computes no statistic.

What the page holds, top to bottom:

- filters: model family, suite, metric (one at a time), budget (default: the largest), method kind (offline,
  online, inference-time: the method's registered `kind`, else "offline") and the reference of Δ (the base model or
  a chosen method at the same budget);
- charts: the efficiency frontier (the metric against NFE used, 95% CIs, the base model as a band), a forest plot
  of the paired Δ per method at the selected budget, proxy-vs-oracle Δ (reward hacking: the lower-right quadrant)
  and the inversion error-vs-NFE panels;
- the table: one row per method and budget, the metric's mean with a small interval bar, Δ against the reference
  with its CI, the win rate; ▲/▼ mark a paired Δ whose 95% CI excludes 0. A method opens a detail view: its
  settings, budget used, training curve (loss against step), its sample images beside the base model's for the same
  prompts and sampling seeds, and links to the records;
- the results in words (`summary.md`), the inversion tables and links to the paper figures of `figures/`.

Charts are drawn as inline SVG by the page's script from the embedded numbers, not embedded as `figures.py`'s PNGs:
the filters redraw them (metric, budget, kind, reference); they are redrawn at the width of their box, so their
9-12 px labels stay 9-12 px on a 400 px screen, where a 4.6-inch PNG's labels shrink below 6 px; every point carries
its numbers in a tooltip; and the data is a few kilobytes where the PNGs took hundreds. The PNGs stay in `figures/`
for papers and are linked from the page.

`index.html#selftest` runs the page's self-test once it has drawn: it applies a filter and checks that the rows shown
change, sorts by the metric's column and checks the order follows the means, opens a detail view, measures that the
main table's box does not overflow (scrollWidth <= clientWidth), and writes the results as JSON into
`<pre id="selftest-result">` (and posts them to a parent window, when the page is framed at a chosen width).
`tests/test_browser.py` reads them from headless Chromium.

The HTML is a pure function of the records: inputs sorted, numbers rounded to 6 significant digits, no dates.
"""

from __future__ import annotations

import html
import json
import math
import numbers
import re
from collections import defaultdict
from pathlib import Path

import pandas as pd

from bench.results.figures import PALETTE
from bench.results.report import PAIR_RESAMPLES, budget_label, directions, metric_names, pairs_table
from bench.results.reward_hacking import row_reward
from methods.alignment import METHODS

KINDS = ("offline", "online", "inference-time")  # what a method's registered `kind` may say; "offline" by default
PROXIES = ("toy-pickscore", "toy-clip")  # proxy scorers plotted against the suite's primary metric where recorded
CURVE_POINTS = 120  # a training curve keeps at most this many (step, loss) points, evenly spaced over the steps


def ci_sign(low: float, high: float) -> int:
    """+1 when a 95% CI lies above 0, -1 when below, else 0 (a CI that touches 0 contains it)."""
    if low > 0:
        return 1
    if high < 0:
        return -1
    return 0


def method_kind(algorithm: str) -> str:
    """How a method uses data ("offline", "online" or "inference-time"): its registered class's `kind`
    (`AlignmentMethod.kind`); "offline" for a method not registered in this installation."""
    try:
        method = METHODS.get(METHODS.canonical(algorithm))
    except KeyError:  # not registered here (e.g. a plugin of another installation)
        return "offline"
    return method.kind


def model_family(pipeline: str) -> str:
    """The model family of a recorded pipeline (hub id or local path): "SDXL", "SD 2.x", "SD 1.x", "toy", else the
    pipeline's name."""
    name = pipeline.replace("\\", "/").lower()
    parts = [p for p in name.split("/") if p]
    if "toy" in parts:
        return "toy"
    if "xl" in name:
        return "SDXL"
    if "stable-diffusion-2" in name or "sd2" in name:
        return "SD 2.x"
    if "stable-diffusion" in name or "sd1" in name or "sd-v1" in name:
        return "SD 1.x"
    if not parts:
        return "unknown"
    return parts[-2] if parts[-1] == "pipeline" and len(parts) > 1 else parts[-1]


def _compact(value):
    """JSON-ready: floats to 6 significant digits (NaN and infinities to null), numpy scalars to Python."""
    if isinstance(value, dict):
        return {str(k): _compact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_compact(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return None if not math.isfinite(value) else float(f"{value:.6g}")
    return str(value)


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "none" if value is None else str(value)


def run_settings(record: dict) -> list[list[str]]:
    """(setting, value as text) of a run: its method's config and training settings, how they were tuned, the
    evaluation and the pipeline, in a fixed order."""
    config = record.get("config", {})
    entry = config.get("methods", {}).get(record["method"]) or {}
    items = [("algorithm", entry["algorithm"])] if entry.get("algorithm") else []
    for part, prefix in (("config", "method"), ("train", "train")):
        items += [(f"{prefix}.{key}", entry[part][key]) for key in sorted(entry.get(part, {}))]
    tuning = record.get("tuning") or {}
    items += [(f"tuning.{key}", tuning[key]) for key in ("study", "trials", "objective", "split", "validation_score",
                                                          "budget_per_trial") if key in tuning]
    items += [(f"eval.{key}", config["eval"][key]) for key in ("guidance", "steps", "images_per_prompt")
              if key in config.get("eval", {})]
    items += [(key, config[key]) for key in ("pipeline", "dtype", "preference_data", "eval_split") if key in config]
    git = record.get("environment", {}).get("git", {})
    if git.get("commit"):
        items.append(("git commit", git["commit"][:12] + (" (dirty)" if git.get("dirty") else "")))
    return [[key, _shown(value)] for key, value in items]


def training_curve(history: list[dict], points: int = CURVE_POINTS) -> list[list[float]]:
    """[step, loss] of a record's `training.history`, thinned to at most `points` evenly spaced entries (first and
    last kept)."""
    rows = [h for h in history if isinstance(h.get("loss"), (int, float)) and "step" in h]
    if len(rows) > points:
        rows = [rows[i] for i in sorted({round(i * (len(rows) - 1) / (points - 1)) for i in range(points)})]
    return [[h["step"], float(f"{h['loss']:.4g}")] for h in rows]


def _run(path: Path, record: dict, results: Path) -> dict:
    """What the detail view shows of one record."""
    budget, usage = record["budget"], record["budget"].get("usage", {})
    samples = record.get("samples") or {}
    evaluation = record["evaluation"]
    return {
        "path": path.relative_to(results).as_posix(), "method": record["method"], "seed": record["seed"],
        "budget": {"limit": budget["limit"], "unit": budget["unit"], "used": budget.get("used"),
                   "nfe": usage.get("nfe"), "steps": usage.get("steps"), "samples": usage.get("samples"),
                   "seconds": budget.get("seconds")},
        "settings": run_settings(record),
        "curve": training_curve((record.get("training") or {}).get("history", [])),
        "samples": [{"i": i, "prompt": evaluation["prompts"][i], "seed": evaluation["seeds"][i], "png": png}
                    for i, png in zip(samples.get("indices", []), samples.get("png_base64", []))],
    }


def _metric_cells(row: dict, metrics: list[str]) -> dict:
    """Per metric: mean and CI, Δ vs the base model with CI and its sign (`ci_sign`), win rate with CI."""
    cells = {}
    for m in metrics:
        cell = {"mean": row[m], "lo": row[f"{m}_ci_low"], "hi": row[f"{m}_ci_high"]}
        delta = row.get(f"{m}_delta")
        if delta is not None and not pd.isna(delta):
            low, high = row[f"{m}_delta_ci_low"], row[f"{m}_delta_ci_high"]
            cell.update({"d": delta, "dlo": low, "dhi": high, "sig": ci_sign(low, high), "w": row[f"{m}_win"],
                         "wlo": row[f"{m}_win_ci_low"], "whi": row[f"{m}_win_ci_high"]})
        cells[m] = cell
    return cells


def _pairs(records: list[dict], metrics: list[str], primary_pairs: pd.DataFrame) -> dict:
    """budget -> metric -> method A -> method B (A < B) -> Δ A − B, win rate of A, CIs, `ci_sign`, shared seeds, and
    for the primary metric the leaderboard's Holm-adjusted p (over the suite's primary comparisons)."""
    holm = {(r["budget"], r["metric"], r["method_a"], r["method_b"]): r["p_holm"]
            for r in primary_pairs.to_dict("records")}
    out: dict = {}
    for r in pairs_table(records, metrics=metrics, resamples=PAIR_RESAMPLES).to_dict("records"):  # CIs; p from Holm's
        entry = {"d": r["delta"], "lo": r["delta_ci_low"], "hi": r["delta_ci_high"], "w": r["win"],
                 "wlo": r["win_ci_low"], "whi": r["win_ci_high"], "seeds": r["seeds"],
                 "sig": ci_sign(r["delta_ci_low"], r["delta_ci_high"])}
        p_holm = holm.get((r["budget"], r["metric"], r["method_a"], r["method_b"]))
        if p_holm is not None:
            entry["p_holm"] = p_holm
        out.setdefault(r["budget"], {}).setdefault(r["metric"], {}).setdefault(r["method_a"], {})[r["method_b"]] = entry
    return out


def page_data(loaded: list[tuple[Path, dict]], inversions: list[tuple[Path, dict]], *, results: Path,
              tables: dict[str, pd.DataFrame], pairs: dict[str, pd.DataFrame]) -> dict:
    """Everything the page shows, as one JSON-ready dict: per suite its metrics, methods, budgets and method-vs-method
    pairs; one row per (suite, budget, method) of the comparison `tables`; per record (by its path relative to
    `results`) what its detail view shows; per inversion result its error-vs-NFE points. `pairs` holds each suite's
    primary-metric `pairs_table` (for its Holm-adjusted p)."""
    results = Path(results)
    members: dict[tuple, list[tuple[Path, dict]]] = defaultdict(list)
    for path, record in loaded:
        members[(record["suite"], budget_label(record), record["method"], row_reward(record))].append((path, record))
    suites, rows, runs = [], [], {}
    for suite in sorted(tables):
        table = tables[suite]
        suite_records = [r for _, r in loaded if r["suite"] == suite]
        primary = suite_records[0]["config"]["metrics"][0]
        higher = directions(suite_records)
        scales = {m: s.get("scale", "") for r in suite_records for m, s in r.get("scorers", {}).items()}
        metrics = sorted(metric_names(table), key=lambda m: m != primary)  # the primary metric first
        methods = sorted(set(table["method"]) - {"base"})
        for order, row in enumerate(table.to_dict("records")):
            reward = "" if row.get("reward") in (None, "-") else row["reward"]  # the reward an online row optimised
            group = sorted(members[(suite, row["budget"], row["method"], reward)],
                           key=lambda item: (item[1]["seed"] is not None, item[1]["seed"] or 0, item[0].as_posix()))
            first = group[0][1]
            entry = first.get("config", {}).get("methods", {}).get(first["method"]) or {}
            algorithm = entry.get("algorithm", first["method"])
            for path, record in group:
                runs[path.relative_to(results).as_posix()] = _run(path, record, results)
            rows.append({
                "id": f"{suite}/{row['budget']}/{row['method']}" + (f"/{reward}" if reward else ""), "suite": suite,
                "method": row["method"], **({"reward": reward} if reward else {}),
                "algorithm": algorithm, "kind": "base" if row["method"] == "base" else method_kind(algorithm),
                "family": model_family(first.get("config", {}).get("pipeline", "")), "budget": row["budget"],
                "budget_order": -1 if row["method"] == "base" else first["budget"]["limit"], "order": order,
                "seeds": row["seeds"], "nfe": row["nfe"], "seconds": row["train_seconds"],
                "runs": [path.relative_to(results).as_posix() for path, _ in group], "m": _metric_cells(row, metrics)})
        suite_rows = [r for r in rows if r["suite"] == suite]
        suites.append({
            "name": suite, "primary": primary, "family": suite_rows[0]["family"],
            "metrics": [{"name": m, "higher": higher.get(m, True), "scale": scales.get(m, "")} for m in metrics],
            "methods": methods, "colors": {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)},
            "budgets": list(dict.fromkeys(r["budget"] for r in suite_rows if r["method"] != "base")),
            "proxies": [p for p in PROXIES if p in metrics and p != primary],
            "pairs": _pairs(suite_records, metrics, pairs[suite]),
        })
    kinds = list(KINDS) + sorted({r["kind"] for r in rows} - set(KINDS) - {"base"})
    return _compact({
        "palette": list(PALETTE), "kinds": kinds, "suites": suites, "rows": rows, "runs": runs,
        "inversions": [{"name": path.parent.name, "path": path.relative_to(results).as_posix(),
                        "family": model_family(result["config"].get("pipeline", "")),
                        "steps": result["config"]["steps"], "dtype": result["config"]["dtype"],
                        "points": [{"sampler": r["sampler"], "guidance": r["guidance"],
                                    "nfe": r["nfe_invert"] + r["nfe_reconstruct"], "mse": r["latent_mse"],
                                    "psnr": r.get("psnr")} for r in result["records"]]}
                       for path, result in inversions],
    })


# ---- Static HTML around the data --------------------------------------------------------------------------------------

def _inline_markdown(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", text)


def markdown_html(markdown: str, shift: int = 1) -> str:
    """The little markdown `summary.md` uses (headings, bullets, paragraphs, bold, italics, code) as HTML, headings
    `shift` levels down."""
    out, bullets = [], []

    def flush() -> None:
        if bullets:
            out.append("<ul>" + "".join(f"<li>{b}</li>" for b in bullets) + "</ul>")
            bullets.clear()

    for line in markdown.splitlines():
        heading = re.match(r"^(#+)\s+(.*)$", line)
        if line.startswith("- "):
            bullets.append(_inline_markdown(line[2:]))
            continue
        flush()
        if heading:
            level = min(6, len(heading.group(1)) + shift)
            out.append(f"<h{level}>{_inline_markdown(heading.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline_markdown(line)}</p>")
    flush()
    return "\n".join(out)


def _static_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f'<div class="scroll"><table class="plain"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def page_html(data: dict, *, summary: str, inversion_tables: list[tuple[str, pd.DataFrame]], figures: list[str],
              n_records: int) -> str:
    """The page: `data` (`page_data`) embedded as JSON, drawn by the script; `summary` (summary.md) as HTML; the
    inversion tables (title, table as text); links to the paper `figures` (paths relative to the page)."""
    # every "<" escaped: no text in the data can close the script element or open a comment in it
    payload = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")
    inversion = "".join(f"<h3>{html.escape(title)}</h3>{_static_table(df)}" for title, df in inversion_tables)
    links = "".join(f'<li><a href="{html.escape(f)}">{html.escape(Path(f).name)}</a></li>' for f in figures)
    n_inversions = len(data["inversions"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>diffusion-align-bench leaderboard</title>
<style>{CSS}</style>
<script>{ERROR_CAPTURE}</script>
</head><body>
<header><h1>diffusion-align-bench leaderboard</h1>
<p class="lede">Rebuilt by <code>bench leaderboard</code> from {n_records} run records and {n_inversions} inversion
result{"" if n_inversions == 1 else "s"}. Every method of a suite trained under the same compute budget. Means with
95% confidence intervals from a bootstrap over training seeds, then prompts; Δ and win rate are paired with the
reference (the base model, or a method you choose) on the same prompts and sampling seeds.
<span class="nowrap"><span class="mark up">▲</span>/<span class="mark down">▼</span></span> mark a Δ whose 95% CI
excludes 0. Open a method for its settings, training curve and images.</p></header>
<form class="filters" id="filters" onsubmit="return false">
<label>model family<select id="f-family"></select></label>
<label>suite<select id="f-suite"></select></label>
<label>metric<select id="f-metric"></select></label>
<label>budget<select id="f-budget"></select></label>
<label>method kind<select id="f-kind"></select></label>
<label>Δ against<select id="f-ref"></select></label>
</form>
<section id="charts-section"><h2>Charts</h2><div class="legend" id="legend"></div><div class="charts" id="charts"></div>
</section>
<section id="table-section"><h2 id="table-title">Table</h2><p class="note" id="row-count"></p>
<div class="table-wrap" id="table-wrap"><table><thead id="board-head"></thead><tbody id="rows"></tbody></table></div>
<p class="note" id="table-note"></p>
<noscript><p>The table and charts need JavaScript; <code>leaderboard.md</code> holds the same numbers.</p></noscript>
</section>
<section><details><summary><h2>Results in words</h2></summary>{markdown_html(summary)}</details></section>
{f'<section><details><summary><h2>Inversion tables</h2></summary>{inversion}</details></section>' if inversion else ""}
<section><h2>Files</h2><p class="note">Every number here comes from the records under <code>runs/</code>;
<a href="leaderboard.md">leaderboard.md</a> and <a href="leaderboard.csv">leaderboard.csv</a> hold the tables, and the
figures for papers (matplotlib):</p><ul class="files">{links}</ul></section>
<dialog id="detail"></dialog>
<pre id="selftest-result" hidden></pre>
<script type="application/json" id="page-data">{payload}</script>
<script>{SCRIPT}</script>
</body></html>
"""


CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #d9d9d9; --soft: #f4f5f7; --better: #0072B2; --worse: #D55E00; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 0 auto;
  padding: 12px 16px 40px; max-width: 1320px; }
h1 { font-size: 1.45em; margin: .2em 0 .3em; } h2 { font-size: 1.15em; margin: 1.3em 0 .5em; }
h3 { font-size: 1em; margin: 1em 0 .3em; } h4 { font-size: .95em; margin: .8em 0 .3em; }
summary h2 { display: inline; } summary { cursor: pointer; margin: 1.3em 0 .5em; }
.lede { max-width: 62em; color: #333; margin: 0 0 .8em; } .note { color: var(--muted); font-size: 12.5px; margin: .3em 0; }
code { font-size: 12px; background: var(--soft); padding: 0 3px; border-radius: 3px; }
.filters { display: flex; flex-wrap: wrap; gap: 8px 14px; padding: 8px 10px; background: var(--soft);
  border: 1px solid var(--line); border-radius: 6px; position: sticky; top: 0; z-index: 2; }
.filters label { display: flex; flex-direction: column; font-size: 11.5px; color: var(--muted); min-width: 0; }
.filters select { font-size: 13.5px; max-width: 100%; margin-top: 2px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12.5px; margin-bottom: 6px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 430px), 1fr)); gap: 14px 22px; }
.chart { min-width: 0; } .chart h3 { margin: .2em 0 .1em; } .chart .note { margin: 0 0 .3em; }
.chart svg { display: block; max-width: 100%; height: auto; overflow: visible; }
.panels { display: flex; flex-wrap: wrap; gap: 8px; } .panels > div { flex: 1 1 220px; min-width: 0; }
svg text { font-size: 11px; fill: #333; } svg .axis { stroke: #999; } svg .grid { stroke: #e6e6e6; }
.table-wrap { max-width: 100%; overflow-x: auto; }
.table-wrap table { border-collapse: collapse; width: 100%; font-size: 13px; }
.table-wrap th, .table-wrap td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left;
  vertical-align: middle; }
.table-wrap th { background: var(--soft); white-space: nowrap; font-weight: 600; }
.table-wrap th button { font: inherit; background: none; border: 0; padding: 0; cursor: pointer; color: inherit; }
.table-wrap td.num, .table-wrap th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.table-wrap tr.base td { background: #fafafa; }
.open { font: inherit; color: var(--better); background: none; border: 0; padding: 0; cursor: pointer; text-align: left;
  text-decoration: underline dotted; white-space: nowrap; }
.algo, .tag { color: var(--muted); font-size: 11.5px; } .tag { border: 1px solid var(--line); border-radius: 8px;
  padding: 0 5px; margin-left: 4px; }
.ci { color: var(--muted); font-size: 11.5px; }
.mark { font-size: 11px; margin-left: 2px; } .mark.better { color: var(--better); } .mark.worse { color: var(--worse); }
.mark.up, .mark.down { color: var(--fg); } .nowrap { white-space: nowrap; }
td.sig-better .val { color: var(--better); font-weight: 600; } td.sig-worse .val { color: var(--worse); font-weight: 600; }
.bar { position: relative; display: inline-block; width: 72px; height: 12px; margin-left: 6px; vertical-align: middle; }
.bar i { position: absolute; top: 5px; height: 2px; background: #888; min-width: 1px; }
.bar b { position: absolute; top: 2px; width: 8px; height: 8px; margin-left: -4px; border-radius: 50%; background: #333; }
.bar u { position: absolute; top: 0; width: 0; height: 12px; border-left: 1px dashed #aaa; }
.scroll { overflow-x: auto; max-width: 100%; }
table.plain { border-collapse: collapse; font-size: 12.5px; } table.plain th, table.plain td { border-bottom: 1px solid
  var(--line); padding: 3px 8px; text-align: left; white-space: nowrap; }
.files { columns: 2 16em; font-size: 13px; }
dialog { width: min(980px, calc(100vw - 16px)); max-height: calc(100vh - 24px); border: 1px solid var(--line);
  border-radius: 8px; padding: 14px 16px; }
dialog::backdrop { background: rgba(0, 0, 0, .35); }
dialog header { display: flex; justify-content: space-between; align-items: start; gap: 10px; }
dialog h2 { margin: 0; } dialog .close { font-size: 20px; background: none; border: 0; cursor: pointer; }
.kv { border-collapse: collapse; font-size: 12.5px; width: 100%; } .kv td, .kv th { border-bottom: 1px solid var(--line);
  padding: 3px 6px; text-align: left; vertical-align: top; overflow-wrap: anywhere; }
.detail-grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 340px), 1fr)); gap: 8px 20px; }
.samples { display: grid; gap: 3px; align-items: center; max-width: 640px; }
.samples img { width: 100%; image-rendering: pixelated; display: block; border-radius: 2px; }
.samples .lab { font-size: 11.5px; color: var(--muted); padding-right: 4px; white-space: nowrap; }
.samples .col { font-size: 11px; color: var(--muted); text-align: center; }
.prompts { font-size: 12px; color: #333; padding-left: 1.6em; margin: .4em 0; }
@media (max-width: 700px) {
  body { padding: 8px 8px 30px; } .filters { position: static; gap: 6px 10px; }
  .filters label { flex: 1 1 40%; } .wide, .ci { display: none; }
  .table-wrap table { font-size: 12.5px; } .table-wrap th, .table-wrap td { padding: 4px 5px; }
  .bar { width: 44px; margin-left: 3px; }
}
"""

ERROR_CAPTURE = """
window.PAGE_ERRORS = [];
window.addEventListener("error", e => window.PAGE_ERRORS.push(String(e.message)));
(function () { const original = console.error; console.error = function (...args) {
  window.PAGE_ERRORS.push(args.map(String).join(" ")); original.apply(console, args); }; })();
"""

SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("page-data").textContent);
const el = id => document.getElementById(id);
const ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};
const esc = s => String(s).replace(/[&<>"']/g, c => ESCAPES[c]);
const unique = xs => Array.from(new Set(xs));
const color = i => DATA.palette[i % DATA.palette.length];
const state = {family: "all", suite: null, metric: null, budget: null, kind: "all", ref: "base", sortKey: null, asc: false};
const FILTERS = {family: "f-family", suite: "f-suite", metric: "f-metric", budget: "f-budget", kind: "f-kind", ref: "f-ref"};

// ---- numbers as text
function fixed(v, digits = 3) { return v == null ? "—" : (v < 0 ? "−" : "") + Math.abs(v).toFixed(digits); }
function signed(v, digits = 3) { return v == null ? "—" : (v < 0 ? "−" : "+") + Math.abs(v).toFixed(digits); }
function count(v) {
  if (v == null) return "—";
  if (v >= 1e6) return (v / 1e6).toPrecision(3) + "M";
  if (v >= 1e4) return (v / 1e3).toPrecision(3) + "k";
  return String(Math.round(v));
}
function short(v) {
  if (v == null) return "—";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e4 || a < 1e-2)) return v.toExponential(1).replace("e+", "e").replace(".0e", "e");
  return String(Number(v.toPrecision(3)));
}
const ci = (lo, hi, f = fixed) => `[${f(lo)}, ${f(hi)}]`;

// ---- what the filters select
const suiteOf = name => DATA.suites.find(s => s.name === name);
const metricOf = (suite, name) => suite.metrics.find(m => m.name === name) || suite.metrics[0];
const inFamily = r => state.family === "all" || r.family === state.family;
const ofKind = r => state.kind === "all" || r.method === "base" || r.kind === state.kind;
const atBudget = r => state.budget === "all" || r.method === "base" || r.budget === state.budget;
function rowsOfSuite() { return DATA.rows.filter(r => r.suite === state.suite); }
function visibleRows() { return rowsOfSuite().filter(r => inFamily(r) && ofKind(r) && atBudget(r)); }
function setOptions(key, options, value) {
  const select = el(FILTERS[key]);
  select.innerHTML = options.map(([v, label]) => `<option value="${esc(v)}">${esc(label)}</option>`).join("");
  select.value = options.some(o => o[0] === value) ? value : (options.length ? options[0][0] : "");
  state[key] = select.value;
}
function syncFilters() {
  const families = unique(DATA.suites.map(s => s.family)).sort();
  setOptions("family", [["all", "all families"], ...families.map(f => [f, f])], state.family);
  const suites = DATA.suites.filter(inFamily);
  setOptions("suite", suites.map(s => [s.name, s.name]), state.suite);
  const suite = suiteOf(state.suite);
  if (!suite) return;
  const primary = m => m.name === suite.primary ? " (primary)" : "";
  setOptions("metric", suite.metrics.map(m => [m.name, m.name + primary(m)]), state.metric || suite.primary);
  const largest = suite.budgets.length ? suite.budgets[suite.budgets.length - 1] : "all";
  setOptions("budget", [["all", "all budgets"], ...suite.budgets.map(b => [b, b])], state.budget || largest);
  const rows = rowsOfSuite(), runsOf = k => rows.filter(r => r.kind === k).length;
  setOptions("kind", [["all", "all kinds"], ...DATA.kinds.map(k => [k, `${k} (${runsOf(k)})`])], state.kind);
  setOptions("ref", [["base", "the base model"], ...suite.methods.map(m => [m, m])], state.ref);
}
function setFilter(key, value) {
  state[key] = value;
  if (key === "family" || key === "suite") Object.assign(state, {metric: null, budget: null, ref: "base", sortKey: null});
  syncFilters();
  render();
}

// ---- one cell's numbers: against the base model from the row, against a method from the suite's pairs
function compared(row, metric) {
  const cell = row.m[metric];
  if (!cell) return null;
  const out = {mean: cell.mean, lo: cell.lo, hi: cell.hi, d: null, dlo: null, dhi: null, sig: 0, w: null};
  if (state.ref === "base") {
    if (cell.d != null) {
      Object.assign(out, {d: cell.d, dlo: cell.dlo, dhi: cell.dhi, sig: cell.sig, w: cell.w, wlo: cell.wlo, whi: cell.whi});
    }
    return out;
  }
  if (row.method === "base" || row.method === state.ref) return out;
  const byMetric = (suiteOf(row.suite).pairs[row.budget] || {})[metric] || {};
  const [a, b] = [row.method, state.ref].sort();
  const pair = (byMetric[a] || {})[b];
  if (!pair) return out;
  if (a === row.method) {  // stored as A − B with A before B by name
    Object.assign(out, {d: pair.d, dlo: pair.lo, dhi: pair.hi, sig: pair.sig, w: pair.w, wlo: pair.wlo, whi: pair.whi});
  } else {
    Object.assign(out, {d: -pair.d, dlo: -pair.hi, dhi: -pair.lo, sig: -pair.sig, w: 1 - pair.w, wlo: 1 - pair.whi,
                        whi: 1 - pair.wlo});
  }
  return Object.assign(out, {p_holm: pair.p_holm, seeds: pair.seeds});
}
const refName = () => state.ref === "base" ? "base model" : state.ref;
function markOf(c, higher, ref = refName()) {
  if (!c || !c.sig) return "";
  const better = (c.sig > 0) === higher;
  const title = `Δ vs ${ref} ${signed(c.d)} ${ci(c.dlo, c.dhi, signed)}: the 95% CI excludes 0` +
    (c.p_holm != null ? `; p_Holm = ${short(c.p_holm)}` : "");
  return `<span class="mark ${better ? "better" : "worse"}" title="${esc(title)}">${c.sig > 0 ? "▲" : "▼"}</span>`;
}

// ---- the table
function columns(metric) {
  const budget = state.budget === "all" ? "" : "wide";  // one budget selected: the column repeats it
  return [{key: "method", label: "method"}, {key: "budget", label: "budget", cls: budget},
          {key: "seeds", label: "seeds", cls: "num wide"}, {key: "nfe", label: "NFE used", cls: "num wide"},
          {key: "mean", label: `${metric} (95% CI)`, cls: "num"}, {key: "delta", label: `Δ vs ${refName()}`, cls: "num"},
          {key: "win", label: "win rate", cls: "num wide"}];
}
function sortValue(row, key) {
  const c = compared(row, state.metric) || {};
  const values = {method: row.method, budget: row.budget_order, seeds: row.seeds, nfe: row.nfe, mean: c.mean, delta: c.d,
                  win: c.w};
  return values[key];
}
function sortTable(key) {
  if (state.sortKey === key) state.asc = !state.asc;
  else Object.assign(state, {sortKey: key, asc: key === "method" || key === "budget"});
  renderTable();
}
function sorted(rows) {
  if (!state.sortKey) return rows.slice().sort((a, b) => a.order - b.order);
  return rows.slice().sort((a, b) => {
    const x = sortValue(a, state.sortKey), y = sortValue(b, state.sortKey);
    if (x == null || y == null) return (x == null) - (y == null) || a.order - b.order;
    return (x < y ? -1 : x > y ? 1 : a.order - b.order) * (state.asc ? 1 : -1);
  });
}
function headerCell(c) {
  const arrow = state.sortKey === c.key ? (state.asc ? " ▲" : " ▼") : "";
  const aria = state.sortKey === c.key ? ` aria-sort="${state.asc ? "ascending" : "descending"}"` : "";
  return `<th class="${c.cls || ""}" data-key="${c.key}"${aria}><button type="button">${esc(c.label)}${arrow}</button></th>`;
}
function methodCell(r) {
  const name = r.method === "base" ? "base model" : r.method;
  const algo = r.algorithm !== r.method ? ` <span class="algo">(${esc(r.algorithm)})</span>` : "";
  const reward = r.reward ? ` <span class="algo">on ${esc(r.reward)}</span>` : "";  // what an online row optimised
  const tag = r.kind !== "offline" && r.kind !== "base" ? `<span class="tag">${esc(r.kind)}</span>` : "";
  const ref = r.method === state.ref ? `<span class="tag">reference</span>` : "";
  return `<td><button type="button" class="open" data-id="${esc(r.id)}">${esc(name)}</button>${algo}${reward}${tag}${ref}</td>`;
}
function renderTable() {
  const suite = suiteOf(state.suite), head = el("board-head"), body = el("rows");
  if (!suite) {
    head.innerHTML = "";
    body.innerHTML = `<tr><td>No run records.</td></tr>`;
    return;
  }
  const metric = metricOf(suite, state.metric), cols = columns(metric.name), rows = sorted(visibleRows());
  head.innerHTML = "<tr>" + cols.map(headerCell).join("") + "</tr>";
  head.querySelectorAll("th").forEach(th => th.querySelector("button").onclick = () => sortTable(th.dataset.key));
  const cells = rows.map(r => compared(r, metric.name));
  const ends = cells.filter(Boolean).flatMap(c => [c.lo, c.hi]);
  const lo = Math.min(...ends), span = Math.max(...ends) - lo || 1;
  const at = v => (v - lo) / span * 100;
  const base = cells[rows.findIndex(r => r.method === "base")];
  const budgetClass = cols[1].cls;
  body.innerHTML = rows.map((r, i) => {
    const c = cells[i];
    if (!c) {
      return `<tr data-id="${esc(r.id)}">${methodCell(r)}<td class="${budgetClass}">${esc(r.budget)}</td>` +
        `<td colspan="5" class="note">${esc(metric.name)} not recorded</td></tr>`;
    }
    const bar = `<span class="bar" title="95% CI ${ci(c.lo, c.hi)}">` +
      (base ? `<u style="left:${at(base.mean).toFixed(1)}%"></u>` : "") +
      `<i style="left:${at(c.lo).toFixed(1)}%;width:${(at(c.hi) - at(c.lo)).toFixed(1)}%"></i>` +
      `<b style="left:${at(c.mean).toFixed(1)}%"></b></span>`;
    const sig = c.sig ? ((c.sig > 0) === metric.higher ? "sig-better" : "sig-worse") : "";
    const delta = c.d == null ? "—"
      : `<span class="val">${signed(c.d)}</span> <span class="ci">${ci(c.dlo, c.dhi, signed)}</span>`;
    const win = c.w == null ? "—" : `${fixed(c.w, 2)} <span class="ci">${ci(c.wlo, c.whi, v => fixed(v, 2))}</span>`;
    const holm = c.p_holm != null ? ` title="p_Holm = ${short(c.p_holm)}"` : "";
    return `<tr data-id="${esc(r.id)}" data-mean="${c.mean}" class="${r.method === "base" ? "base" : ""}">${methodCell(r)}` +
      `<td class="${budgetClass}">${esc(r.budget)}</td><td class="num wide">${r.seeds}</td>` +
      `<td class="num wide" title="${Math.round(r.nfe)}">${count(r.nfe)}</td>` +
      `<td class="num ${sig}"><span class="val">${fixed(c.mean)}</span>${markOf(c, metric.higher)}${bar}</td>` +
      `<td class="num ${sig}"${holm}>${delta}</td><td class="num wide">${win}</td></tr>`;
  }).join("") || `<tr><td colspan="7">No runs match these filters.</td></tr>`;
  body.querySelectorAll("button.open").forEach(b => b.onclick = () => openDetail(b.dataset.id));
  const shown = rows.filter(r => r.method !== "base").length, withBase = rows.length > shown ? " and the base model" : "";
  el("table-title").textContent = `Table: ${suite.name}, ${metric.name} (${metric.higher ? "higher" : "lower"} is better)`;
  el("row-count").textContent = `${shown} method row${shown === 1 ? "" : "s"}${withBase}` +
    (state.budget !== "all" ? ` at ${state.budget}` : "") + (metric.scale ? `; ${metric.name}: ${metric.scale}` : "");
  el("table-note").innerHTML = `Bar: the 95% CI (line) and the mean (dot) on a scale common to the rows; dashed: the base ` +
    `model's mean. <span class="mark better">▲</span>/<span class="mark worse">▼</span>: the paired Δ against ` +
    `${esc(refName())} has a 95% CI excluding 0 (blue: better, orange: worse, by the metric's direction). Not adjusted for ` +
    `multiple comparisons: the orderings in “Results in words” need a Holm-adjusted p &lt; 0.05.` +
    (state.ref !== "base" ? " Pairs share the budget and training seeds." : "") +
    " Click a header to sort; a method opens its detail.";
}

// ---- SVG helpers (markup parsed as HTML: inline SVG needs no namespace)
function scale(d0, d1, r0, r1, log) {
  const f = log ? Math.log10 : v => v, a = f(d0), b = f(d1);
  return v => r0 + (f(v) - a) / ((b - a) || 1) * (r1 - r0);
}
function ticks(d0, d1, n, log) {
  if (log) {
    const first = Math.ceil(Math.log10(d0) - 1e-9), last = Math.floor(Math.log10(d1) + 1e-9);
    if (last - first >= 2) {  // decades, every k-th (k = 1, 2, 5, 10, 20, ...) so that at most n are labelled
      const k = [1, 2, 5, 10, 20, 50, 100].find(step => Math.floor((last - first) / step) + 1 <= n) || 100;
      const out = [];
      for (let e = Math.ceil(first / k) * k; e <= last; e += k) out.push(Math.pow(10, e));
      return out;
    }
    const out = [];
    for (let e = first - 1; e <= last; e++) {
      for (const m of [1, 2, 5]) {
        const v = m * Math.pow(10, e);
        if (v >= d0 * 0.999 && v <= d1 * 1.001) out.push(v);
      }
    }
    return out.length >= 2 ? out : [d0, d1];
  }
  const raw = (d1 - d0) / n || 1, step0 = Math.pow(10, Math.floor(Math.log10(raw))), err = raw / step0;
  const step = step0 * (err >= 7 ? 10 : err >= 3 ? 5 : err >= 1.4 ? 2 : 1), out = [];  // n / 1.5 to 1.4 n ticks
  for (let v = Math.ceil(d0 / step) * step; v <= d1 + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}
function padded(lo, hi, log, fraction = 0.06) {
  if (!isFinite(lo) || !isFinite(hi)) return [0, 1];
  if (log) {
    if (lo === hi) return [lo / 1.6, hi * 1.6];
    const f = Math.pow(hi / lo, fraction);
    return [lo / f, hi * f];
  }
  if (lo === hi) {
    const d = Math.abs(lo) * 0.1 || 1;
    return [lo - d, hi + d];
  }
  const d = (hi - lo) * fraction;
  return [lo - d, hi + d];
}
const line = (x1, y1, x2, y2, attrs) =>
  `<line x1="${x1.toFixed(1)}" y1="${y1.toFixed(1)}" x2="${x2.toFixed(1)}" y2="${y2.toFixed(1)}" ${attrs}/>`;
const text = (x, y, content, attrs = "") => `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attrs}>${content}</text>`;
function frame(box, x, y, opts) {  // grid, axes, tick labels and axis labels
  const {left, top, right, bottom} = box, xfmt = opts.xfmt || short;
  let s = "";
  for (const v of ticks(opts.x0, opts.x1, Math.max(2, Math.min(6, Math.floor((right - left) / 70))), opts.xlog)) {
    s += line(x(v), top, x(v), bottom, `class="grid"`) + text(x(v), bottom + 14, xfmt(v), `text-anchor="middle"`);
  }
  if (y) {
    for (const v of ticks(opts.y0, opts.y1, Math.max(2, Math.min(6, Math.floor((bottom - top) / 40))), opts.ylog)) {
      s += line(left, y(v), right, y(v), `class="grid"`) + text(left - 4, y(v) + 3.5, short(v), `text-anchor="end"`);
    }
  }
  s += line(left, bottom, right, bottom, `class="axis"`) + line(left, top, left, bottom, `class="axis"`);
  s += text((left + right) / 2, bottom + 30, esc(opts.xlabel), `text-anchor="middle"`);
  if (opts.ylabel) {
    s += `<text transform="translate(12,${(top + bottom) / 2}) rotate(-90)" text-anchor="middle">${esc(opts.ylabel)}</text>`;
  }
  return s;
}
function svg(width, height, body, label) {
  const size = `width="${width}" height="${height}" viewBox="0 0 ${width} ${height}"`;
  return `<svg ${size} role="img" aria-label="${esc(label)}">${body}</svg>`;
}
const SHAPES = ["●", "■", "▲", "◆", "▼", "✚", "✖", "★"];
const POLYGONS = [null, [[-.85, -.85], [.85, -.85], [.85, .85], [-.85, .85]], [[0, -1.1], [1, .8], [-1, .8]],
  [[0, -1.2], [1, 0], [0, 1.2], [-1, 0]], [[0, 1.1], [1, -.8], [-1, -.8]],
  [[-.35, -1], [.35, -1], [.35, -.35], [1, -.35], [1, .35], [.35, .35], [.35, 1], [-.35, 1], [-.35, .35], [-1, .35],
   [-1, -.35], [-.35, -.35]],
  [[-1, -.6], [-.6, -1], [0, -.4], [.6, -1], [1, -.6], [.4, 0], [1, .6], [.6, 1], [0, .4], [-.6, 1], [-1, .6], [-.4, 0]],
  [[0, -1.2], [.3, -.4], [1.1, -.4], [.45, .1], [.7, 1], [0, .45], [-.7, 1], [-.45, .1], [-1.1, -.4], [-.3, -.4]]];
function marker(shape, x, y, r, stroke, filled) {  // one of SHAPES, drawn
  const attrs = `fill="${filled ? stroke : "#fff"}" stroke="${stroke}" stroke-width="1.5"`;
  const polygon = POLYGONS[shape % POLYGONS.length];
  if (!polygon) return `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="${r}" ${attrs}/>`;
  const points = polygon.map(([u, v]) => `${(x + u * r).toFixed(1)},${(y + v * r).toFixed(1)}`).join(" ");
  return `<polygon points="${points}" ${attrs}/>`;
}
function chartBox(content, title, note) {
  return `<div class="chart"><h3>${esc(title)}</h3>${note ? `<p class="note">${note}</p>` : ""}${content}</div>`;
}
function widthOf() {  // the width of one cell of the charts' grid (columns of at least 430 px, 22 px apart)
  const width = el("charts").clientWidth || 600, columns = Math.max(1, Math.floor((width + 22) / (430 + 22)));
  return Math.max(240, Math.min(900, Math.floor((width - 22 * (columns - 1)) / columns)));
}
const atSelected = () => state.budget !== "all" ? ` at ${state.budget}` : "";
const rowName = r => r.method + (r.reward ? ` on ${r.reward}` : "") + (state.budget === "all" ? ` · ${r.budget}` : "");

// ---- the charts
function frontierChart(suite, metric, rows) {
  const title = `Efficiency frontier: ${metric.name} against training NFE`;
  const runs = rows.filter(r => r.method !== "base" && r.m[metric.name]), name = metric.name;
  const base = rowsOfSuite().find(r => r.method === "base" && inFamily(r) && r.m[name]);
  if (!runs.length) return chartBox(`<p class="note">No method rows match the filters.</p>`, title);
  const W = widthOf(), H = Math.round(Math.min(340, W * 0.66)), box = {left: 52, top: 10, right: W - 12, bottom: H - 40};
  const nfes = runs.map(r => r.nfe), low = Math.min(...nfes), high = Math.max(...nfes);
  const logX = high > 4 * Math.max(low, 1);  // as figures.frontier
  const spread = high * 0.1;  // one budget: its runs' few NFE of difference are not spread over the whole axis
  const [x0, x1] = logX ? padded(low, high, true, 0.08)
    : padded(Math.min(low, high - spread), Math.max(high, low + spread), false);
  const ys = runs.concat(base ? [base] : []).flatMap(r => [r.m[name].lo, r.m[name].hi]);
  const [y0, y1] = padded(Math.min(...ys), Math.max(...ys), false);
  const x = scale(x0, x1, box.left, box.right, logX), y = scale(y0, y1, box.bottom, box.top, false);
  let s = "";
  if (base) {
    const b = base.m[name], band = Math.max(1, y(b.lo) - y(b.hi));
    s += `<g><title>base model: ${fixed(b.mean)} ${ci(b.lo, b.hi)}</title>` +
      `<rect x="${box.left}" width="${box.right - box.left}" y="${y(b.hi).toFixed(1)}" height="${band.toFixed(1)}" ` +
      `fill="#e9e9e9"/>` +
      line(box.left, y(b.mean), box.right, y(b.mean), `stroke="#777" stroke-dasharray="4 3"`) + `</g>` +
      text(box.left + 4, y(b.hi) - 3, "base model", `fill="#666"`);
  }
  s += frame(box, x, y, {x0, x1, y0, y1, xlog: logX, xfmt: count, xlabel: "UNet evaluations used in training (NFE)",
                         ylabel: `${name} (mean, 95% CI)`});
  const methods = unique(runs.map(r => r.method));
  for (const [j, method] of methods.entries()) {
    const stroke = suite.colors[method] || "#333", points = runs.filter(r => r.method === method).sort((a, b) => a.nfe - b.nfe);
    const dodge = (j - (methods.length - 1) / 2) * Math.min(4, 40 / methods.length);  // px: methods at one NFE side by side
    const px = r => x(r.nfe) + dodge;
    if (points.length > 1) {
      const path = points.map(r => `${px(r).toFixed(1)},${y(r.m[name].mean).toFixed(1)}`).join(" ");
      s += `<polyline fill="none" stroke="${stroke}" stroke-width="1.6" points="${path}"/>`;
    }
    for (const r of points) {
      const c = r.m[name], selected = state.budget === "all" || r.budget === state.budget;
      const seeds = `${r.seeds} seed${r.seeds === 1 ? "" : "s"}`;
      const about = `${esc(method)} · ${esc(r.budget)}: ${fixed(c.mean)} ${ci(c.lo, c.hi)}, NFE ${Math.round(r.nfe)}, ${seeds}`;
      s += `<g><title>${about}</title>` + line(px(r), y(c.lo), px(r), y(c.hi), `stroke="${stroke}" stroke-width="1.4"`) +
        `<circle cx="${px(r).toFixed(1)}" cy="${y(c.mean).toFixed(1)}" r="${selected ? 4.5 : 3}" fill="${stroke}" ` +
        `stroke="#fff"/></g>`;
    }
  }
  const note = `${esc(suite.name)}: one line per method over its budgets (methods drawn a few px apart)` +
    (state.budget !== "all" ? ` (${esc(state.budget)} enlarged)` : "") + `; grey band: the base model's 95% CI.`;
  return chartBox(svg(W, H, s, "efficiency frontier"), title, note);
}
function forestChart(suite, metric, rows) {
  const items = rows.filter(r => r.method !== "base" && r.method !== state.ref).map(r => ({r, c: compared(r, metric.name)}))
    .filter(o => o.c && o.c.d != null).sort((a, b) => b.c.d - a.c.d || a.r.order - b.r.order);
  const title = `Paired Δ ${metric.name} against ${refName()}${atSelected()}`;
  if (!items.length) return chartBox(`<p class="note">No paired differences for these filters.</p>`, title);
  const W = widthOf(), left = Math.min(W * 0.42, 14 + 6.6 * Math.max(...items.map(o => rowName(o.r).length)));
  const H = 20 + 24 * items.length + 40, box = {left, top: 10, right: W - 14, bottom: H - 40};
  const ends = items.flatMap(o => [o.c.dlo, o.c.dhi]).concat([0]);
  const [x0, x1] = padded(Math.min(...ends), Math.max(...ends), false);
  const x = scale(x0, x1, box.left, box.right, false);
  let s = frame(box, x, null, {x0, x1, xlabel: `Δ ${metric.name} vs ${refName()} (paired, 95% CI)`});
  s += line(x(0), box.top, x(0), box.bottom, `stroke="#555" stroke-dasharray="3 3"`);
  items.forEach((o, i) => {
    const py = box.top + 14 + 24 * i, stroke = suite.colors[o.r.method] || "#333", c = o.c;
    const verdict = (c.sig ? "the 95% CI excludes 0" : "the 95% CI contains 0") +
      (c.p_holm != null ? `, p_Holm = ${short(c.p_holm)}` : "");
    s += `<g><title>${esc(rowName(o.r))}: Δ ${signed(c.d)} ${ci(c.dlo, c.dhi, signed)}, ${verdict}</title>` +
      text(left - 6, py + 4, esc(rowName(o.r)), `text-anchor="end"`) +
      line(x(c.dlo), py, x(c.dhi), py, `stroke="${stroke}" stroke-width="2"`) + marker(0, x(c.d), py, 5, stroke, !!c.sig) +
      `</g>`;
  });
  const note = "Filled: the 95% CI excludes 0; hollow: no detectable difference. " +
    `${metric.higher ? "Right" : "Left"} is better.`;
  return chartBox(svg(W, H, s, "forest plot"), title, note);
}
function proxyChart(suite, rows, proxy) {
  const truth = suite.primary, title = `Proxy vs oracle: Δ ${proxy} against Δ ${truth}${atSelected()}`;
  const paired = (r, m) => r.m[m] && r.m[m].d != null;
  const items = rows.filter(r => r.method !== "base" && paired(r, proxy) && paired(r, truth));
  if (!items.length) return chartBox(`<p class="note">No method rows match the filters.</p>`, title);
  const W = widthOf(), H = Math.round(Math.min(340, W * 0.72)), box = {left: 52, top: 10, right: W - 12, bottom: H - 40};
  const xs = items.flatMap(r => [r.m[proxy].dlo, r.m[proxy].dhi]).concat([0]);
  const ys = items.flatMap(r => [r.m[truth].dlo, r.m[truth].dhi]).concat([0]);
  const [x0, x1] = padded(Math.min(...xs), Math.max(...xs), false), [y0, y1] = padded(Math.min(...ys), Math.max(...ys), false);
  const x = scale(x0, x1, box.left, box.right, false), y = scale(y0, y1, box.bottom, box.top, false);
  const hacked = `x="${x(0).toFixed(1)}" y="${y(0).toFixed(1)}" width="${Math.max(0, box.right - x(0)).toFixed(1)}" ` +
    `height="${Math.max(0, box.bottom - y(0)).toFixed(1)}"`;
  let s = `<rect ${hacked} fill="#fbe3d6"/>`;
  s += frame(box, x, y, {x0, x1, y0, y1, xlabel: `Δ ${proxy} vs base (proxy)`, ylabel: `Δ ${truth} vs base`});
  s += line(x(0), box.top, x(0), box.bottom, `stroke="#555"`) + line(box.left, y(0), box.right, y(0), `stroke="#555"`);
  s += text(box.right - 4, box.bottom - 6, "proxy ↑, oracle not", `text-anchor="end" fill="#a0461a"`);
  for (const r of items) {
    const p = r.m[proxy], t = r.m[truth], stroke = suite.colors[r.method] || "#333", px = x(p.d), py = y(t.d);
    s += `<g><title>${esc(rowName(r))}: Δ ${esc(proxy)} ${signed(p.d)} ${ci(p.dlo, p.dhi, signed)}, ` +
      `Δ ${esc(truth)} ${signed(t.d)} ${ci(t.dlo, t.dhi, signed)}</title>` +
      line(x(p.dlo), py, x(p.dhi), py, `stroke="${stroke}" stroke-opacity=".55"`) +
      line(px, y(t.dlo), px, y(t.dhi), `stroke="${stroke}" stroke-opacity=".55"`) +
      `<circle cx="${px.toFixed(1)}" cy="${py.toFixed(1)}" r="4.5" fill="${stroke}" stroke="#fff"/>` +
      text(px + 6, py - 5, esc(rowName(r)), `font-size="10"`) + `</g>`;
  }
  const note = "Reward hacking shows as a point in the shaded lower-right quadrant: the proxy rises, the oracle does not. " +
    "Whiskers: 95% CIs.";
  return chartBox(svg(W, H, s, "proxy vs oracle"), title, note);
}
function inversionChart(inv) {
  const samplers = unique(inv.points.map(p => p.sampler));
  const guidances = unique(inv.points.map(p => p.guidance)).sort((a, b) => a - b);
  const positive = inv.points.filter(p => p.mse > 0).map(p => p.mse);
  const floor = positive.length ? Math.min(...positive) / 100 : 1e-30;  // an exact 0 is drawn below the smallest error
  const nfes = inv.points.map(p => p.nfe), errors = inv.points.map(p => Math.max(p.mse, floor));
  const [x0, x1] = padded(Math.min(...nfes), Math.max(...nfes), false, 0.1);
  const [y0, y1] = padded(Math.min(...errors), Math.max(...errors), true, 0.08);
  const full = widthOf(), W = Math.max(240, guidances.length > 1 && full > 480 ? full / 2 - 6 : full);
  const H = Math.round(Math.min(300, W * 0.8)), box = {left: 54, top: 10, right: W - 10, bottom: H - 40};
  const x = scale(x0, x1, box.left, box.right, false), y = scale(y0, y1, box.bottom, box.top, true);
  const panels = guidances.map(g => {
    let s = frame(box, x, y, {x0, x1, y0, y1, ylog: true, xlabel: "NFE per image (invert + reconstruct)",
                              ylabel: "latent MSE"});
    s += text(box.right, box.top + 10, `guidance ${g}`, `text-anchor="end" font-weight="600"`);
    for (const p of inv.points.filter(q => q.guidance === g)) {
      const i = samplers.indexOf(p.sampler), exact = p.mse > 0 ? "" : " (exact: drawn at the floor)";
      s += `<g><title>${esc(p.sampler)}, guidance ${g}: latent MSE ${short(p.mse)}${exact}, PSNR ${short(p.psnr)} dB, ` +
        `${short(p.nfe)} NFE</title>` +
        marker(i, x(p.nfe), y(Math.max(p.mse, floor)), Math.max(3, 6 - 0.3 * i), color(i), true) + `</g>`;
    }
    return `<div>${svg(W, H, s, `inversion error against NFE, guidance ${g}`)}</div>`;
  }).join("");
  const legend = samplers.map((name, i) =>
    `<span><span style="color:${color(i)}">${SHAPES[i % SHAPES.length]}</span> ${esc(name)}</span>`);
  const note = `${esc(inv.name)}: ${inv.steps} steps, ${esc(inv.dtype)}; one panel per guidance scale; log scale, an exact 0 ` +
    `drawn below the smallest error.`;
  return chartBox(`<div class="panels">${panels}</div><div class="legend">${legend.join("")}</div>`,
                  "Inversion: reconstruction error against NFE", note);
}
function renderCharts() {
  const suite = suiteOf(state.suite);
  let charts = "", legend = "";
  if (suite) {
    const metric = metricOf(suite, state.metric), rows = visibleRows();
    legend = suite.methods.map(m => `<span><i style="background:${suite.colors[m]}"></i>${esc(m)}</span>`).join("");
    charts += frontierChart(suite, metric, rowsOfSuite().filter(r => inFamily(r) && ofKind(r)));
    charts += forestChart(suite, metric, rows) + suite.proxies.map(p => proxyChart(suite, rows, p)).join("");
  }
  charts += DATA.inversions.filter(inFamily).map(inversionChart).join("");
  el("legend").innerHTML = legend;
  el("charts").innerHTML = charts || `<p class="note">Nothing to draw.</p>`;
}
function render() {
  renderTable();
  renderCharts();
}

// ---- the detail view of one row
function curveChart(runs) {
  const curves = runs.filter(r => r.curve.length);
  if (!curves.length) return `<p class="note">No training history in ${runs.length > 1 ? "these records" : "this record"}.</p>`;
  const W = 420, H = 230, box = {left: 52, top: 10, right: W - 10, bottom: H - 40};
  const steps = curves.flatMap(r => r.curve.map(p => p[0])), losses = curves.flatMap(r => r.curve.map(p => p[1]));
  const x0 = Math.min(...steps), x1 = Math.max(Math.max(...steps), x0 + 1);
  const [y0, y1] = padded(Math.min(...losses), Math.max(...losses), false);
  const x = scale(x0, x1, box.left, box.right, false), y = scale(y0, y1, box.bottom, box.top, false);
  let s = frame(box, x, y, {x0, x1, y0, y1, xlabel: "training step", ylabel: "loss"});
  curves.forEach((r, i) => {
    const path = r.curve.map(p => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    s += `<polyline class="curve" fill="none" stroke="${color(i)}" stroke-width="1.3" points="${path}">` +
      `<title>seed ${r.seed}</title></polyline>`;
  });
  const keys = curves.map((r, i) => `<span><i style="background:${color(i)}"></i>seed ${r.seed}</span>`);
  const legend = curves.length < 2 ? "" : `<div class="legend">${keys.join("")}</div>`;
  return svg(W, H, s, "training loss against step").replace("<svg ", `<svg style="width:100%" `) + legend;
}
function settingsTable(runs) {
  const keys = unique(runs.flatMap(r => r.settings.map(kv => kv[0])));
  const value = (r, k) => (r.settings.find(kv => kv[0] === k) || [k, "—"])[1];
  return `<table class="kv"><tbody>${keys.map(k => {
    const values = runs.map(r => value(r, k));
    const shown = unique(values).length === 1 ? esc(values[0])
      : runs.map((r, i) => `seed ${r.seed}: ${esc(values[i])}`).join("<br>");
    return `<tr><th>${esc(k)}</th><td>${shown}</td></tr>`;
  }).join("")}</tbody></table>`;
}
function budgetTable(runs) {
  const head = ["seed", "used / limit", "NFE", "steps", "samples", "seconds"].map(h => `<th>${h}</th>`).join("");
  const rows = runs.map(r => {
    const b = r.budget, cells = [r.seed == null ? "—" : r.seed, `${short(b.used)} / ${short(b.limit)} ${esc(b.unit)}`,
                                 short(b.nfe), short(b.steps), short(b.samples), short(b.seconds)];
    return "<tr>" + cells.map(c => `<td>${c}</td>`).join("") + "</tr>";
  });
  return `<table class="kv"><thead><tr>${head}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
}
function metricsTable(row, suite) {
  const head = ["metric", "mean [95% CI]", "Δ vs base [95% CI]", "win rate vs base"].map(h => `<th>${h}</th>`).join("");
  const rows = suite.metrics.filter(m => row.m[m.name]).map(m => {
    const c = row.m[m.name];
    const delta = c.d == null ? "—" : `${signed(c.d)} ${ci(c.dlo, c.dhi, signed)}${markOf(c, m.higher, "base model")}`;
    const win = c.w == null ? "—" : `${fixed(c.w, 2)} ${ci(c.wlo, c.whi, v => fixed(v, 2))}`;
    return `<tr><td>${esc(m.name)}</td><td>${fixed(c.mean)} ${ci(c.lo, c.hi)}</td><td>${delta}</td><td>${win}</td></tr>`;
  });
  return `<table class="kv"><thead><tr>${head}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
}
function samplesGrid(runs, baseRun) {
  const first = runs.find(r => r.samples.length);
  if (!first) return `<p class="note">No sample images in ${runs.length > 1 ? "these records" : "this record"}.</p>`;
  const indices = first.samples.map(s => s.i);
  const lines = (baseRun && !runs.includes(baseRun) ? [["base model", baseRun]] : [])
    .concat(runs.map(r => [r.seed == null ? r.method : `seed ${r.seed}`, r]));
  let grid = `<span></span>` + indices.map((_, j) => `<span class="col">${j + 1}</span>`).join("");
  for (const [label, run] of lines) {
    grid += `<span class="lab">${esc(label)}</span>` + indices.map(i => {
      const s = run.samples.find(t => t.i === i);
      if (!s) return `<span></span>`;
      const about = `${esc(s.prompt)} (seed ${s.seed})`;
      return `<img alt="${esc(label)}: ${about}" title="${about}" src="data:image/png;base64,${s.png}">`;
    }).join("");
  }
  const prompts = first.samples.map(s => `<li>${esc(s.prompt)} <span class="note">(sampling seed ${s.seed})</span></li>`);
  const columns = `grid-template-columns: auto repeat(${indices.length}, minmax(22px, 64px))`;
  return `<div class="samples" style="${columns}">${grid}</div><ol class="prompts">${prompts.join("")}</ol>`;
}
function openDetail(id) {
  const row = DATA.rows.find(r => r.id === id), suite = suiteOf(row.suite), runs = row.runs.map(p => DATA.runs[p]);
  const baseRow = DATA.rows.find(r => r.suite === row.suite && r.method === "base");
  const baseRun = baseRow ? DATA.runs[baseRow.runs[0]] : null, trained = row.method !== "base";
  const about = [trained ? row.budget : "", `${row.seeds} seed${row.seeds === 1 ? "" : "s"}`,
                 row.algorithm !== row.method ? `runs ${row.algorithm}` : "", trained ? row.kind : "", row.family,
                 `suite ${row.suite}`].filter(Boolean).join(" · ");
  const dialog = el("detail");
  const curve = trained ? curveChart(runs) : `<p class="note">The base model is not trained.</p>`;
  dialog.innerHTML = `<header><div><h2>${esc(trained ? row.method : "base model")}</h2>` +
    `<p class="note">${esc(about)}</p></div>` +
    `<button type="button" class="close" aria-label="close">×</button></header>` +
    `<div class="detail-grid"><div><h3>Metrics</h3>${metricsTable(row, suite)}<h3>Budget used</h3>${budgetTable(runs)}</div>` +
    `<div><h3>Training curve</h3>${curve}</div></div>` +
    `<h3>Samples${trained ? ", beside the base model's" : ""}</h3>` +
    `<p class="note">Same prompts and sampling seeds per column (hover for the prompt).</p>${samplesGrid(runs, baseRun)}` +
    `<h3>Settings</h3>${settingsTable(runs)}` +
    `<h3>Records</h3><ul>${runs.map(r => `<li><a href="${esc(r.path)}">${esc(r.path)}</a></li>`).join("")}</ul>`;
  dialog.querySelector(".close").onclick = () => dialog.close();
  if (!dialog.open) dialog.showModal();
}

// ---- start
el("detail").addEventListener("click", e => { if (e.target === el("detail")) el("detail").close(); });
for (const [key, id] of Object.entries(FILTERS)) el(id).addEventListener("change", e => setFilter(key, e.target.value));
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(renderCharts, 150);
});
syncFilters();
render();

// ---- the self-test (index.html#selftest): results as JSON in #selftest-result, and to a parent window
function filterCheck(rowsShown, restore) {
  const before = rowsShown().length, saved = Object.assign({}, state);
  for (const key of ["budget", "kind", "family", "suite"]) {
    for (const value of Array.from(el(FILTERS[key]).options).map(o => o.value)) {
      if (value === saved[key]) continue;
      const select = el(FILTERS[key]);
      select.value = value;
      select.dispatchEvent(new Event("change"));
      const rows = rowsShown().map(tr => DATA.rows.find(r => r.id === tr.dataset.id));
      restore();
      if (rows.length === before) continue;
      const passes = {budget: r => r.method === "base" || value === "all" || r.budget === value,
                      kind: r => r.method === "base" || value === "all" || r.kind === value,
                      family: r => value === "all" || r.family === value, suite: r => r.suite === value}[key];
      return {ok: rows.every(passes), filter: key, value, before, after: rows.length};
    }
  }
  return {ok: false, before, note: "no filter changed the rows shown"};
}
function sortCheck(rowsShown, restore) {
  if (!el("board-head").querySelector('th[data-key="mean"] button')) return {ok: false, note: "no metric column"};
  const orders = [];
  for (let click = 0; click < 2; click++) {
    el("board-head").querySelector('th[data-key="mean"] button').click();
    const shown = rowsShown().filter(tr => tr.dataset.mean !== undefined), means = shown.map(tr => Number(tr.dataset.mean));
    const recorded = shown.map(tr => DATA.rows.find(r => r.id === tr.dataset.id).m[state.metric].mean);
    const inOrder = means.every((v, i) => i === 0 || (state.asc ? means[i - 1] <= v : means[i - 1] >= v));
    orders.push({asc: state.asc, means, ok: means.length > 1 && inOrder && means.every((v, i) => v === recorded[i])});
  }
  restore();
  return {ok: orders.every(o => o.ok) && orders[0].asc !== orders[1].asc, orders};
}
function detailCheck() {  // a method's detail, or the base model's where no method is shown
  const buttons = Array.from(el("rows").querySelectorAll("button.open"));
  const open = buttons.find(b => !b.dataset.id.endsWith("/base")) || buttons[0];
  if (!open) return {ok: !DATA.suites.length, note: "no row"};
  open.click();
  const dialog = el("detail"), count = selector => dialog.querySelectorAll(selector).length;
  const result = {ok: dialog.open && count("a[href]") >= 1 && count(".samples img") >= 1, curves: count("polyline.curve"),
                  images: count(".samples img"), links: count("a[href]")};
  dialog.close();
  return result;
}
function selftest() {
  const rowsShown = () => Array.from(el("rows").querySelectorAll("tr[data-id]"));
  const saved = Object.assign({}, state);
  const restore = () => {
    Object.assign(state, saved);
    syncFilters();
    render();
  };
  const wrap = el("table-wrap"), root = document.documentElement, svgs = el("charts").querySelectorAll("svg").length;
  const checks = {
    filter: filterCheck(rowsShown, restore),
    sort: sortCheck(rowsShown, restore),
    overflow: {ok: wrap.scrollWidth <= wrap.clientWidth && root.scrollWidth <= root.clientWidth,
               table: [wrap.scrollWidth, wrap.clientWidth], page: [root.scrollWidth, root.clientWidth]},
    detail: detailCheck(),
    charts: {ok: svgs >= (DATA.suites.length ? 2 : 0) + (DATA.inversions.length ? 1 : 0), svgs},
  };
  const errors = window.PAGE_ERRORS.slice();
  const result = {ok: !errors.length && Object.values(checks).every(c => c.ok), width: window.innerWidth, errors, checks};
  const out = el("selftest-result");
  out.textContent = JSON.stringify(result);
  out.dataset.ok = String(result.ok);
  out.hidden = false;
  if (window.parent !== window) window.parent.postMessage({selftest: result}, "*");
}
if (location.hash === "#selftest") setTimeout(selftest, 0);
"""
