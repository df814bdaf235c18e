"""The leaderboard: tables, figures, statements and a static page rebuilt from the records under `results/runs/`.

`build(results)` reads every alignment run record and every `bench invert` result under
`results/runs/` and writes `leaderboard.md` (per suite the comparison table and the paired comparisons
between methods), `leaderboard.csv`, `leaderboard-sets.csv` (the set metrics pooled over seeds,
`bench.results.set_metrics`, where records have them), `figures/*.png`, `summary.md` (the results in words, generated
from those numbers by `result_statements`: wording that follows the intervals), a self-contained
`index.html` (`bench.results.page`: charts, filters, significance marked, every row down to its records and samples; no
network) and `leaderboard.json`, a manifest of
the SHA256 of every record it used and every file it wrote. All outputs are pure functions of the
records (sorted inputs, fixed number formats, figures without dates), so `check(results)` rebuilds
into a temporary directory and names every record added, removed or changed since the manifest,
every output whose bytes differ and every file under `figures/` a rebuild does not produce (a build
deletes those).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from bench.core.records import INVERT, RecordError, read_record, write_json_atomic, write_text_atomic
from bench.results.figures import (
    frontier,
    inversion_error_vs_nfe,
    inversion_time_per_image,
    proxy_vs_oracle,
    sample_grid,
    training_curve,
    win_rates,
)
from bench.results.page import PROXIES, ci_sign, page_data, page_html
from bench.results.report import (
    comparison_table,
    directions,
    display_pairs,
    display_table,
    find_records,
    inversion_table,
    load_records,
    metric_names,
    pairs_table,
    three_significant,
)
from bench.results.reward_hacking import (
    display_gains,
    file_slug,
    gains_table,
    series_label,
    statement_lines,
    suite_metrics,
    training_curves,
)
from bench.results.set_metrics import display_set_table, diversity_statements, set_metric_table
from bench.results.wording import name_list
from metrics.weights import sha256_file

MANIFEST = "leaderboard.json"
SUMMARY = "summary.md"
ALPHA = 0.05  # a Holm-adjusted p below this orders two methods


def _inversion_results(paths: list[Path], *, skip_bad: bool = False) -> list[tuple[Path, dict]]:
    """Every `bench invert` result at or under `paths`; a corrupt one raises RecordError naming it unless `skip_bad`."""
    files = [f for p in map(Path, paths) for f in (sorted(p.rglob("invert.json")) if p.is_dir() else
                                                   [p] if p.name == "invert.json" else [])]
    out = []
    for path in files:
        try:
            out.append((path, read_record(path, INVERT)))
        except RecordError as err:
            if not skip_bad:
                raise RecordError(f"{err}; pass --skip-bad to leave it out") from None
    return out


def figures_for(records: list[dict], inversions: list[tuple[Path, dict]], out: Path, fmt: str = "png") -> list[Path]:
    """Every figure the records support: per suite the frontier, win rates, proxy vs oracle and the
    sample grid, and where runs optimised a reward their training curves and the reward-hacking scatter; per
    `bench invert` result its error-vs-NFE and time-per-image charts."""
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
            if "reward" in table:  # runs that optimised a reward (`bench.results.reward_hacking`)
                written += _reward_hacking_figures(suite_records, table, out, fmt)
        if any(r.get("samples", {}).get("png_base64") for r in suite_records):
            written.append(sample_grid(suite_records, out / f"{suite}-samples.{fmt}"))
    for path, result in inversions:
        stem = path.parent.name
        written.append(inversion_error_vs_nfe(result["records"], out / f"inversion-{stem}-error-vs-nfe.{fmt}"))
        written.append(inversion_time_per_image(result["records"], out / f"inversion-{stem}-time.{fmt}"))
    return written


def _reward_hacking_figures(records: list[dict], table: pd.DataFrame, out: Path, fmt: str) -> list[Path]:
    """Each online method's training curves per reward, and every run's proxy gain against its ground-truth gain."""
    suite, primary = records[0]["suite"], records[0]["config"]["metrics"][0]
    written = [training_curve(curves, out / f"{suite}-training-{file_slug(curves.label)}.{fmt}")
               for curves in training_curves(records, primary)]
    metrics = suite_metrics(records, table)
    if metrics is not None and metrics.proxies:
        written.append(proxy_vs_oracle(table, metrics.proxies[0], primary, out / f"{suite}-reward-hacking.{fmt}",
                                       metrics))
    return written


def build_figures(paths: list[Path], out: Path, fmt: str = "png", *, skip_bad: bool = False) -> list[Path]:
    """`bench figures`: figures from the run records and `bench invert` results under `paths`."""
    records = [r for _, r in load_records(find_records(paths), skip_bad=skip_bad)]
    inversions = _inversion_results(paths, skip_bad=skip_bad)
    return figures_for(records, inversions, Path(out), fmt)


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
    md = ["# Leaderboard", "", f"Rebuilt by `bench leaderboard` from {len(records)} run records under "
                        "`results/runs/`. 95% CIs from a bootstrap over training seeds, then prompts; win rate and Δ "
                        "paired with the base model on the same prompts and sampling seeds.", ""]
    tables, all_pairs, set_tables, statements, inversion_tables = {}, {}, {}, [], []
    for suite in sorted({r["suite"] for r in records}):
        suite_records = [r for r in records if r["suite"] == suite]
        table = comparison_table(suite_records)
        pairs = pairs_table(suite_records)  # the suite's primary metric; Holm over the suite's comparisons
        tables[suite], all_pairs[suite] = table, pairs
        higher = directions(suite_records)
        primary = suite_records[0]["config"]["metrics"][0]
        md += [f"## Suite `{suite}`", "", display_table(table, higher, "md").to_markdown(index=False), ""]
        if len(pairs):
            title = f"paired comparisons between methods: {primary} (Holm-adjusted over {len(pairs)} comparisons)"
            md += [f"### Suite `{suite}`, {title}", "", "Δ and win rate of A against B on the training seeds both "
                   "have and the same prompts and sampling seeds; 95% CIs and p from a bootstrap over shared seeds, "
                   "then prompts; bold: Holm-adjusted p < 0.05.", "", display_pairs(pairs, "md").to_markdown(index=False),
                   ""]
        gains = gains_table(table, suite_records)
        if len(gains):
            md += [f"### Suite `{suite}`, reward hacking: proxy and {primary} gains vs the base model", "",
                   display_gains(gains, "md").to_markdown(index=False), ""]
        sets = set_metric_table(suite_records)
        diversity = diversity_statements(sets, table, primary, suite_records)
        if len(sets):
            set_tables[suite] = sets
            md += [f"### Suite `{suite}`, distribution and diversity (set metrics)", "",
                   "Each set metric on a row's evaluated images (FD and precision/recall/density/coverage against the "
                   "reference set, Vendi within each prompt's images); seeds pooled by their mean. 95% CIs are "
                   "conservative (`bench/results/set_metrics.py`): the seeds' mean interval over prompts plus their "
                   "spread, and for Δ vs base the sum of both rows' half-widths.", "",
                   display_set_table(sets).to_markdown(index=False), ""]
        variants = variant_statements(suite_records)
        if variants:
            md += [f"### Suite `{suite}`, labelled runs", "", *[f"- {v}" for v in variants], ""]
        statements.append((suite, result_statements(table, pairs, primary, higher, variants=variants,
                                                    reward_hacking=statement_lines(table, suite_records),
                                                    diversity=diversity)))
    for path, result in inversions:
        title = f"inversion: {path.parent.name}, {result['config']['steps']} steps, {result['config']['dtype']}"
        shown = three_significant(inversion_table(result["records"]))
        inversion_tables.append((title, shown))
        md += [f"## {title}", "", shown.to_markdown(index=False), ""]
    written = figures_for(records, inversions, figures_dir)
    for stale in _figure_files(figures_dir) - set(written):  # e.g. of a suite whose records were removed
        stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "leaderboard.md", "\n".join(md))
    csv = pd.concat(tables.values(), ignore_index=True) if tables else pd.DataFrame()
    write_text_atomic(out / "leaderboard.csv", csv.to_csv(index=False, float_format="%.6g"))
    set_csv = [out / "leaderboard-sets.csv"] if set_tables else []
    for path in set_csv:  # the set metrics' own columns (`bench.results.set_metrics`)
        write_text_atomic(path, pd.concat(set_tables.values(), ignore_index=True).to_csv(index=False, float_format="%.6g"))
    if not set_csv:
        (out / "leaderboard-sets.csv").unlink(missing_ok=True)
    summary = summary_markdown(statements)
    data = page_data(loaded, inversions, results=results, tables=tables, pairs=all_pairs)
    write_text_atomic(out / "index.html", page_html(data, summary=summary, inversion_tables=inversion_tables,
                                                    figures=[p.relative_to(out).as_posix() for p in sorted(written)],
                                                    n_records=len(records)))
    write_text_atomic(out / SUMMARY, summary)
    readme = results.resolve().parent / "README.md"
    if out.resolve() == results.resolve() and readme_block(readme) is not None:
        write_text_atomic(readme, with_readme_block(readme.read_text(), summary))
    outputs = [out / "leaderboard.md", out / "leaderboard.csv", *set_csv, out / "index.html", out / SUMMARY,
               *sorted(written)]
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
    readme = results.resolve().parent / "README.md"
    block = readme_block(readme)
    if block is not None and (results / SUMMARY).exists() and block != _demoted((results / SUMMARY).read_text()):
        problems.append(f"{readme}'s generated results block differs from {SUMMARY} (run `bench leaderboard`)")
    return problems


# ---- The README's results block: the summary's statements, never written by hand -----------------------------------
README_START = "<!-- results: generated by `bench leaderboard` from results/summary.md; edits here are overwritten -->"
README_END = "<!-- end of generated results -->"


def _demoted(summary: str) -> str:
    """summary.md's text as it sits in the README: headings two levels down (under the README's own)."""
    return "\n".join("##" + line if line.startswith("#") else line for line in summary.strip().splitlines())


def readme_block(readme: Path) -> str | None:
    """The generated block of `readme` (between the markers), or None if it has none."""
    if not readme.is_file():
        return None
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return None
    return text[start + len(README_START):end].strip()


def with_readme_block(text: str, summary: str) -> str:
    """`text` with the block between the markers replaced by the demoted `summary`."""
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    return text[:start] + "\n" + _demoted(summary) + "\n" + text[end:]


# ---- Result statements: wording that follows the intervals ----------------------------------------------------------

def _ci(mean: float, low: float, high: float, digits: int) -> str:
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"



def _seeds(count) -> str:
    return f"{int(count)} seed{'s' if int(count) != 1 else ''}"


def verdict_vs_base(ci_low: float, ci_high: float) -> str:
    """'raises' when the 95% CI of Δ vs the base model lies above 0, 'lowers' when below, else
    'no detectable difference' (a CI that touches 0 contains it)."""
    return {1: "raises", -1: "lowers", 0: "no detectable difference"}[ci_sign(ci_low, ci_high)]


def base_statements(table: pd.DataFrame, metric: str, *, digits: int = 3) -> list[str]:
    """One sentence per budget of a suite's comparison table (`bench.results.report.comparison_table`): which methods raise
    or lower `metric` against the base model (the paired Δ's 95% CI excludes 0, given with it) and which show no
    detectable difference from the base model (the CI contains 0)."""
    if f"{metric}_delta" not in table:
        return []
    rows = table[(table["method"] != "base") & table[f"{metric}_delta"].notna()]
    out = []
    for budget in dict.fromkeys(rows["budget"]):
        group = rows[rows["budget"] == budget]
        seeds = sorted(set(group["seeds"]))
        by_verdict: dict[str, list[str]] = {"raises": [], "lowers": [], "no detectable difference": []}
        for r in group.to_dict("records"):
            low, high = r[f"{metric}_delta_ci_low"], r[f"{metric}_delta_ci_high"]
            seed_note = f"{_seeds(r['seeds'])}; " if len(seeds) > 1 else ""
            by_verdict[verdict_vs_base(low, high)].append(
                f"{series_label(r['method'], r.get('reward'))} ({seed_note}Δ {_ci(r[f'{metric}_delta'], low, high, digits)})")
        count = f"{seeds[0]} training seed{'s' if seeds[0] > 1 else ''} each" if len(seeds) == 1 else "training seeds as noted"
        lead = f"At {budget} ({count}), "
        raised, lowered, neither = by_verdict.values()
        if len(raised) == len(group):
            out.append(f"{lead}every method raises {metric} over the base model: {name_list(raised)}.")
        elif len(lowered) == len(group):
            out.append(f"{lead}every method lowers {metric} below the base model: {name_list(lowered)}.")
        elif len(neither) == len(group):
            out.append(f"{lead}no method shows a detectable difference from the base model in {metric}: "
                       f"{name_list(neither)}.")
        else:
            clauses = []
            if raised:
                clauses.append(f"{name_list(raised)} {'raise' if len(raised) > 1 else 'raises'} {metric} over the base model")
            if lowered:
                clauses.append(f"{name_list(lowered)} {'lower' if len(lowered) > 1 else 'lowers'} "
                               f"{'it' if clauses else metric} below the base model")
            if neither:
                clauses.append(f"{name_list(neither)} {'show' if len(neither) > 1 else 'shows'} no detectable difference "
                               f"from the base model{'' if clauses else ' in ' + metric}")
            out.append(lead + "; ".join(clauses) + ".")
    return out


def pair_statements(pairs: pd.DataFrame, metric: str, *, alpha: float = ALPHA, digits: int = 3) -> list[str]:
    """Method-vs-method sentences from `bench.results.report.pairs_table`: per budget, each method ordered above the methods
    it beats with a Holm-adjusted p < `alpha` (the better one named first, by the scorer's direction, with Δ =
    better − worse and its CI), then every other pair as "no detectable difference"."""
    rows = pairs[pairs["metric"] == metric]
    out = []
    for budget in dict.fromkeys(rows["budget"]):
        group = rows[rows["budget"] == budget]
        beats: dict[str, list[tuple[float, str]]] = {}
        ties = []
        seeds = sorted(set(group["seeds"]))
        for r in group.to_dict("records"):
            detail = (f"{_seeds(r['seeds'])}, " if len(seeds) > 1 else "") + f"p_Holm = {r['p_holm']:.2g}"
            if r["p_holm"] >= alpha:
                delta = _ci(r["delta"], r["delta_ci_low"], r["delta_ci_high"], digits)
                ties.append(f"{r['method_a']} and {r['method_b']} (Δ {delta}, {detail})")
                continue
            a_better = (r["delta"] > 0) == bool(r["higher_is_better"])
            better, worse = (r["method_a"], r["method_b"]) if a_better else (r["method_b"], r["method_a"])
            delta, low, high = ((r["delta"], r["delta_ci_low"], r["delta_ci_high"]) if a_better else
                                (-r["delta"], -r["delta_ci_high"], -r["delta_ci_low"]))
            beats.setdefault(better, []).append((abs(delta), f"{worse} (Δ {_ci(delta, low, high, digits)}, {detail})"))
        direction = "higher" if bool(group["higher_is_better"].iloc[0]) else "lower"
        note = (f"{seeds[0]} shared training seed{'s' if seeds[0] > 1 else ''}" if len(seeds) == 1
                else "shared training seeds as noted")
        for better in sorted(beats, key=lambda m: (-len(beats[m]), m)):
            worse = [text for _, text in sorted(beats[better], key=lambda item: -item[0])]
            out.append(f"At {budget} ({note}), {better} has a {direction} {metric} than {name_list(worse)}.")
        if ties:
            out.append(f"At {budget}, no detectable difference in {metric} (p_Holm ≥ {alpha:g}) between " + "; ".join(ties)
                       + ".")
    return out


def _setting_differences(ours: dict, theirs: dict | None, algorithm: str) -> list[str]:
    """"FIELD = VALUE (ALGORITHM: VALUE)" for every method or training setting in which a labelled run differs from
    its method's own row (`theirs`; None when that method has no row: then every method setting, "FIELD = VALUE")."""
    def shown(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    out = []
    for part in ("config", "train"):
        mine, other = ours.get(part, {}), (theirs or {}).get(part, {})
        for key in sorted(mine):
            if theirs is None and part == "config":
                out.append(f"{key} = {shown(mine[key])}")
            elif theirs is not None and mine[key] != other.get(key):
                out.append(f"{key} = {shown(mine[key])} ({algorithm}: {shown(other.get(key))})")
    return out


def variant_statements(records: list[dict]) -> list[str]:
    """One line per labelled method (`bench run --methods LABEL=METHOD`): which method it runs and which settings
    differ from that method's own row, e.g. the β-matched ablation "uniform-t runs dpo-gamma-t with gamma = 1"."""
    settings = {}  # method or label -> (algorithm, its recorded settings)
    for record in records:
        entry = record.get("config", {}).get("methods", {}).get(record["method"])
        if entry is not None:
            settings.setdefault(record["method"], (entry.get("algorithm", record["method"]), entry))
    lines = []
    for label, (algorithm, entry) in sorted(settings.items()):
        if algorithm == label:
            continue
        own = settings.get(algorithm, (None, None))[1]
        differences = _setting_differences(entry, own, algorithm)
        against = f"; {algorithm}'s row uses the same settings otherwise" if own is not None else ""
        lines.append(f"{label} runs {algorithm} with {', '.join(differences) or 'its settings'}{against}.")
    return lines


def result_statements(table: pd.DataFrame, pairs: pd.DataFrame, primary: str, higher_is_better: dict[str, bool], *,
                      alpha: float = ALPHA, digits: int = 3, variants: list[str] = (),
                      reward_hacking: list[str] = (), diversity: list[str] = ()) -> list[str]:
    """Markdown lines for one suite: what each labelled method is (`variant_statements`), every metric against the
    base model (`base_statements`), the primary metric between methods (`pair_statements`, Holm-adjusted over
    every row of `pairs`), the `reward_hacking` section (`bench.results.reward_hacking.statement_lines`), then what
    the gains cost in distribution distance and diversity (`bench.results.set_metrics.diversity_statements`)."""
    metrics = sorted(metric_names(table), key=lambda m: m != primary)  # the primary metric first
    lines = ["### Labelled runs", "", *[f"- {v}" for v in variants], ""] if variants else []
    lines += ["### Against the base model", ""]
    for metric in metrics:
        sentences = base_statements(table, metric, digits=digits)
        if not sentences:
            continue
        role = "primary metric; " if metric == primary else ""
        lines += [f"**{metric}** ({role}{'higher' if higher_is_better.get(metric, True) else 'lower'} is better):", ""]
        lines += [f"- {s}" for s in sentences] + [""]
    sentences = pair_statements(pairs, primary, alpha=alpha, digits=digits)
    if sentences:
        lines += [f"### Between methods: {primary} (paired; Holm-adjusted over {len(pairs)} comparisons)", ""]
        lines += [f"- {s}" for s in sentences] + [""]
    lines += list(reward_hacking)
    if diversity:
        lines += ["### Distribution and diversity", "", *[f"- {s}" for s in diversity], ""]
    return lines


def summary_markdown(suites: list[tuple[str, list[str]]], *, alpha: float = ALPHA) -> str:
    """`summary.md`: a header stating the wording rules, then each suite's `result_statements`."""
    lines = ["# Results in words", "",
             "Generated by `bench leaderboard` from the numbers in `leaderboard.md` (do not edit by hand). The wording "
             "follows the intervals:", "",
             "- a method *raises* or *lowers* a metric against the base model only when the 95% CI of its paired Δ "
             "(method − base model on the same prompts and sampling seeds; bootstrap over training seeds, then prompts) "
             "excludes 0; otherwise it shows *no detectable difference from the base model*;",
             "- one method is ordered above another only when their paired difference (same prompts, sampling seeds "
             f"and training seeds) has a Holm-adjusted bootstrap p < {alpha:g} over every comparison of the suite's "
             "primary metric; otherwise there is *no detectable difference* between them.", "",
             "Δ is given as the point estimate and its 95% CI in brackets; between methods, Δ = the first-named method "
             "− the second.", ""]
    for suite, statements in suites:
        lines += [f"## Suite `{suite}`", "", *statements]
    return "\n".join(lines).rstrip("\n") + "\n"
