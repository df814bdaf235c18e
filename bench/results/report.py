"""Comparison tables from run records: terminal, markdown, CSV and LaTeX (booktabs).

One row per (suite, budget, method) by default, and per reward for methods that optimise one (online methods: a
`reward` column, and a `reward_hacking` column naming the proxies a row hacks, `bench.results.reward_hacking`; an
offline-only table has neither); `group_by` chooses the grouping keys among `suite`, `budget` and `seed`. The
runs (training seeds) that fall in one row must have been evaluated on the same images (prompts and seeds), and
so must the suite's base model: each statistic is the mean over runs and images, its 95% CI from a bootstrap over
runs, then prompts (`bench.core.stats`), and the win rate and mean change against the base model are paired per
image (a multi-seed win rate is the mean of the seeds' win rates).
Budget columns give the mean use (NFE and training seconds). In markdown and LaTeX the best value of
each metric column is bold (by the scorer's direction); the CSV keeps plain numbers with CI columns.
Every table is a pure function of the records: rows are sorted, numbers formatted with fixed digits.

`pairs_table` (`bench report --pairs`) compares the trained methods with each other: per suite and budget, every
pair on the training seeds both have and the same images, the mean difference and paired win rate with CIs from the
same clustered bootstrap, and a bootstrap p-value Holm-adjusted over the whole table (docs/statistics.md).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch

from bench.core.progress import progress_bar
from bench.core.records import RecordError, read_record, write_text_atomic
from bench.core.stats import compare_methods, holm, run_statistics
from bench.results import protocols
from bench.results.reward_hacking import HACKING, display_gains, hacking_cell, mark, row_reward, series_label
from methods.alignment import METHODS

GROUP_KEYS = ("suite", "budget", "seed")


def find_records(paths: list[str | Path]) -> list[Path]:
    """Alignment run records under the given files/directories (run manifests are skipped), sorted."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += [p for p in path.rglob("*.json") if p.name not in ("run.json", "invert.json")]
        elif path.exists():
            found.append(path)
        else:
            raise RecordError(f"run record {path} does not exist")
    return sorted(set(found))


def _other_json(path: Path) -> bool:
    """A readable JSON object that is not a run record (a --json summary, a dry-run report, `bench weights`)."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(payload, dict):
        return True
    return payload.get("kind", "alignment-run") != "alignment-run" or not {"kind", "schema_version"} & set(payload)


def current_method_name(name: str) -> str:
    """A method's current registered name: a record written under a since-renamed name (`dense-dpo`) groups with
    the new one (`dpo-gamma-t`); "base" and unknown names are kept."""
    return METHODS.canonical(name)


def load_records(paths: list[Path], *, skip_bad: bool = False, progress: bool = False) -> list[tuple[Path, dict]]:
    """Read records; a missing or corrupt one raises RecordError naming it unless `skip_bad`. Other JSON files
    (summaries, reports) are passed over. A method recorded under a deprecated name is read as its current name."""
    out = []
    for path in progress_bar(paths, enabled=progress, desc="records"):
        try:
            record = read_record(path)
        except RecordError:
            if skip_bad or _other_json(path):
                continue
            raise
        if record.get("kind") == "alignment-run":
            record["method"] = current_method_name(record["method"])
            out.append((path, record))
    return out


def budget_label(record: dict) -> str:
    b = record["budget"]
    return "-" if record["method"] == "base" else f"{b['limit']:g}{b['unit']}"


def _row_key(record: dict, group_by: tuple[str, ...]) -> tuple:
    parts = {"suite": record["suite"], "budget": budget_label(record), "seed": record["seed"]}
    return tuple(parts[k] if k in group_by else None for k in GROUP_KEYS) + (record["method"], row_reward(record))


def inference_nfe_per_image(record: dict) -> float | None:
    """What making one evaluated image cost (UNet evaluations of one latent): an inference-time method's
    `inference.nfe_per_image` (its optimisation or search included), else the evaluation's sampling NFE per image;
    None for a record that did not count it."""
    if "inference" in record:
        return record["inference"]["nfe_per_image"]
    evaluation = record["evaluation"]
    return evaluation["nfe"] / len(evaluation["prompts"]) if "nfe" in evaluation else None


def _mean(values: list[float | None]) -> float | None:
    return None if None in values else sum(values) / len(values)


def _describe(record: dict) -> str:
    seed = "" if record["seed"] is None else f", seed {record['seed']}"
    return f"{record['suite']} {record['method']} ({budget_label(record)}{seed}, created {record.get('created', '?')})"


def _check_same_images(a: dict, b: dict) -> None:
    """Records compared or pooled image by image must have sampled the same prompts with the same seeds."""
    for field in ("prompts", "seeds"):
        if a["evaluation"][field] != b["evaluation"][field]:
            raise RecordError(f"{_describe(a)} and {_describe(b)} were evaluated on different {field}; "
                              "report runs of one evaluation set together")


def _one_base_per_suite(records: list[dict]) -> dict[str, dict]:
    """The base record of each suite; several are fine when they hold the same evaluation (e.g. two runs)."""
    bases: dict[str, dict] = {}
    for r in records:
        if r["method"] != "base":
            continue
        seen = bases.setdefault(r["suite"], r)
        if seen["evaluation"]["scores"] != r["evaluation"]["scores"]:
            _check_same_images(seen, r)
            raise RecordError(f"{_describe(seen)} and {_describe(r)}: two base-model evaluations of suite "
                              f"{r['suite']!r} with different scores; report one base model per suite")
    return bases


def _check_metrics(records: list[dict], metrics: list[str] | None) -> None:
    recorded = {name for r in records for name in r["evaluation"]["scores"]}
    missing = [name for name in metrics or [] if name not in recorded]
    if missing:
        raise ValueError(f"--metrics {', '.join(missing)}: not in these records (they have {', '.join(sorted(recorded))})")


def _higher(record: dict, metric: str) -> bool:
    return record.get("scorers", {}).get(metric, {}).get("higher_is_better", True)


def comparison_table(records: list[dict], group_by: tuple[str, ...] = ("suite", "budget"),
                     metrics: list[str] | None = None, resamples: int = 2000) -> pd.DataFrame:
    """Numeric table: per row, metric mean/CI, win rate and Δ vs base with CIs, budget use, seeds."""
    unknown = set(group_by) - set(GROUP_KEYS)
    if unknown:
        raise ValueError(f"--group-by {sorted(unknown)}: choose from {', '.join(GROUP_KEYS)}")
    _check_metrics(records, metrics)
    bases = _one_base_per_suite(records)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[_row_key(r, group_by)].append(r)
    rows = []
    for key, members in groups.items():
        first = members[0]
        for label, value in (("suites", lambda r: r["suite"]), ("budgets", budget_label)):
            pooled = sorted({value(m) for m in members})
            if len(pooled) > 1:
                raise ValueError(f"--group-by {','.join(group_by)}: a {first['method']} row would pool different "
                                 f"{label} ({', '.join(pooled)}); add {label[:-1]} to --group-by")
        base = bases.get(first["suite"])
        for other in [*members[1:], *([base] if base is not None else [])]:
            _check_same_images(first, other)
        prompts = first["evaluation"]["prompts"]  # each image's prompt: the bootstrap's cluster
        names = metrics or list(first["metrics"])
        row = {"suite": first["suite"], "method": first["method"], "reward": key[-1], "budget": budget_label(first),
               "seed": key[2] if "seed" in group_by else "-", "seeds": len({m["seed"] for m in members}),
               "nfe": sum(m["budget"]["usage"]["nfe"] for m in members) / len(members),
               "train_seconds": sum(m["budget"]["seconds"] for m in members) / len(members),
               "inference_nfe_per_image": _mean([inference_nfe_per_image(m) for m in members]),
               "_budget_sort": float("-inf") if first["method"] == "base" else first["budget"]["limit"]}
        scores = {name: torch.tensor([m["evaluation"]["scores"][name] for m in members], dtype=torch.float64)
                  for name in names}  # (S, N) per metric
        compare = base is not None and first["method"] != "base"
        stats = run_statistics(scores, prompts, base=base["evaluation"]["scores"] if compare else None,
                               higher_is_better={name: _higher(first, name) for name in names},
                               resamples=resamples)
        for name in names:
            stat = stats["metrics"][name]
            row.update({f"{name}": stat["mean"], f"{name}_ci_low": stat["ci_low"], f"{name}_ci_high": stat["ci_high"],
                        f"{name}_n": stat["n"]})
            if compare and name in stats["win_rate_vs_base"]:
                win, delta = stats["win_rate_vs_base"][name], stats["delta_vs_base"][name]
                row.update({f"{name}_win": win["mean"], f"{name}_win_ci_low": win["ci_low"],
                            f"{name}_win_ci_high": win["ci_high"], f"{name}_delta": delta["mean"],
                            f"{name}_delta_ci_low": delta["ci_low"], f"{name}_delta_ci_high": delta["ci_high"]})
        rows.append(row)
    df = pd.DataFrame(rows)
    order = {"base": 0}
    df["_base_last"] = df["method"].map(lambda m: order.get(m, 1))
    df = df.sort_values(["suite", "_base_last", "_budget_sort", "budget", "method", "reward", "seed"], kind="stable")
    return mark(df.drop(columns=["_base_last", "_budget_sort"]).reset_index(drop=True), records)


PAIR_RESAMPLES = 10000  # at least; a p-value is at least 2 / (B + 1): Holm over m comparisons needs B + 1 > 40 m to
HOLM_RESAMPLES_PER_COMPARISON = 50  # reach 0.05, so by default a table of m rows draws max(PAIR_RESAMPLES, 50 m)


def _runs_by_method(records: list[dict]) -> dict[tuple, dict[str, dict[int, dict]]]:
    """(suite, budget) -> method -> training seed -> record, for every trained method; a second record of one
    method, budget and seed must hold the same scores."""
    runs: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r["method"] == "base":
            continue
        seen = runs[(r["suite"], budget_label(r))][series_label(r["method"], row_reward(r))].setdefault(r["seed"], r)
        if seen is not r and seen["evaluation"]["scores"] != r["evaluation"]["scores"]:
            raise RecordError(f"{_describe(seen)} and {_describe(r)}: two runs of one method, budget and seed with "
                              "different scores; report one of them")
    return runs


def pairs_table(records: list[dict], metrics: list[str] | None = None, resamples: int | None = None,
                seed: int = 0) -> pd.DataFrame:
    """Method-vs-method paired comparisons: for every suite and budget, every pair of trained methods on the
    training seeds both have (run s of one paired with run s of the other) and the same images, for the suite's
    primary metric and any `metrics`.

    One row per (suite, budget, metric, method_a < method_b): the mean difference A − B with its 95% CI and
    two-sided bootstrap p-value, the paired win rate of A over B (ties half) with its CI, each from the clustered
    bootstrap of `bench.core.stats.compare_methods` (shared seeds, then prompts), and `p_holm`, the Holm-adjusted
    p-value over every row of the table. `resamples` None draws max(PAIR_RESAMPLES, 50 m) resamples for a table of
    m rows, so that the smallest p the bootstrap can give, 2 / (B + 1), survives Holm's factor m at 0.05. Records
    evaluated on other prompts or seeds are refused (RecordError).
    """
    _check_metrics(records, metrics)
    comparisons = []  # (suite, budget, name, secondary, method_a, method_b, seeds, runs_a, runs_b), counted first
    for (suite, budget), methods in _runs_by_method(records).items():
        for runs in methods.values():
            first, *others = runs.values()
            for other in others:
                _check_same_images(first, other)
        names = sorted(methods)
        for i, method_a in enumerate(names):
            for method_b in names[i + 1:]:
                seeds = sorted(set(methods[method_a]) & set(methods[method_b]))
                if not seeds:
                    continue  # nothing to pair: the two were trained with other seeds
                runs_a, runs_b = [methods[method_a][s] for s in seeds], [methods[method_b][s] for s in seeds]
                _check_same_images(runs_a[0], runs_b[0])
                primary = runs_a[0]["config"]["metrics"][0]
                for name in dict.fromkeys([primary, *(metrics or [])]):
                    if all(name in r["evaluation"]["scores"] for r in (runs_a[0], runs_b[0])):
                        comparisons.append((suite, budget, name, name != primary, method_a, method_b, seeds, runs_a,
                                            runs_b))
    if resamples is None:
        resamples = max(PAIR_RESAMPLES, HOLM_RESAMPLES_PER_COMPARISON * len(comparisons))
    rows = []
    for suite, budget, name, secondary, method_a, method_b, seeds, runs_a, runs_b in comparisons:
        scores_a, scores_b = (torch.tensor([r["evaluation"]["scores"][name] for r in runs], dtype=torch.float64)
                              for runs in (runs_a, runs_b))  # (S, N)
        higher = _higher(runs_a[0], name)
        win, delta = compare_methods(scores_a, scores_b, groups=runs_a[0]["evaluation"]["prompts"],
                                     higher_is_better=higher, resamples=resamples, seed=seed)
        rows.append({"suite": suite, "budget": budget, "metric": name, "higher_is_better": higher,
                     "method_a": method_a, "method_b": method_b, "seeds": len(seeds),
                     "seed_list": " ".join(map(str, seeds)), "n": delta["n"], "prompts": delta["clusters"],
                     "delta": delta["mean"], "delta_ci_low": delta["ci_low"], "delta_ci_high": delta["ci_high"],
                     "win": win["mean"], "win_ci_low": win["ci_low"], "win_ci_high": win["ci_high"],
                     "p_value": delta["p_value"], "_budget_sort": runs_a[0]["budget"]["limit"], "_primary": secondary})
    columns = ["suite", "budget", "metric", "higher_is_better", "method_a", "method_b", "seeds", "seed_list", "n",
               "prompts", "delta", "delta_ci_low", "delta_ci_high", "win", "win_ci_low", "win_ci_high", "p_value",
               "p_holm"]
    if not rows:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame(rows)
    df["p_holm"] = holm(df["p_value"].tolist())
    df = df.sort_values(["suite", "_budget_sort", "budget", "_primary", "metric", "method_a", "method_b"], kind="stable")
    return df[columns].reset_index(drop=True)


def display_pairs(df: pd.DataFrame, fmt: str = "md", digits: int = 3, alpha: float = 0.05) -> pd.DataFrame:
    """Strings for humans: 'mean [lo, hi]' for Δ and win rate; a Holm-adjusted p below `alpha` bold (md/tex)."""
    bold = {"md": "**{}**", "tex": "\\textbf{{{}}}", "plain": "{}"}[fmt]

    def ci(mean, low, high, sign: str = "") -> str:
        return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"

    out = pd.DataFrame({"budget": df["budget"], "metric": df["metric"], "A": df["method_a"], "B": df["method_b"],
                        "seeds": df["seed_list"]})
    if df["suite"].nunique() > 1:
        out.insert(0, "suite", df["suite"])
    out["Δ A-B (95% CI)"] = [ci(m, lo, hi, "+") for m, lo, hi in zip(df["delta"], df["delta_ci_low"],
                                                                        df["delta_ci_high"])]
    out["win rate A vs B (95% CI)"] = [ci(m, lo, hi) for m, lo, hi in zip(df["win"], df["win_ci_low"],
                                                                          df["win_ci_high"])]
    out["p"] = df["p_value"].map(lambda p: f"{p:.2g}")
    out["p (Holm)"] = [bold.format(f"{p:.2g}") if p < alpha and fmt != "plain" else f"{p:.2g}" for p in df["p_holm"]]
    return out


def images_per_prompt(record: dict) -> int:
    """k, when the record's images come in contiguous runs of k per prompt (as `evaluation_set` orders them)."""
    prompts = record["evaluation"]["prompts"]
    k = len(prompts) // max(1, len(dict.fromkeys(prompts)))
    if k * len(dict.fromkeys(prompts)) != len(prompts) or any(prompts[i] != prompts[i - i % k] for i in range(len(prompts))):
        raise RecordError(f"{_describe(record)}: its images are not k per prompt in order; no paper protocol applies")
    return k


PROTOCOLS = {
    "imagereward": "mean per prompt, then over prompts, 95% CI over prompts (Xu et al. 2023, Table 1)",
    "kto-median-of-k": "win rate against the base model of each prompt's median image score, k images per prompt, "
                       "k odd (Diffusion-KTO, Li et al. 2024, Tables 1, 4, 5: median of 5)",
}


def protocol_table(records: list[dict], protocol: str, metric: str, *, resamples: int = 2000) -> pd.DataFrame:
    """One row per run (suite, method, budget, training seed): `metric` reported by a paper's protocol
    (`PROTOCOLS`, computed by `bench.results.protocols` from the per-image scores)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    _check_metrics(records, [metric])
    bases = _one_base_per_suite(records)
    rows = []
    for r in sorted(records, key=lambda r: (r["suite"], r["method"] != "base", r["method"], budget_label(r), r["seed"] or 0)):
        k, scores = images_per_prompt(r), r["evaluation"]["scores"][metric]
        if protocol == "kto-median-of-k" and k % 2 == 0:
            raise ValueError(f"--protocol {protocol} needs an odd number of images per prompt (the median is one "
                             f"image's score); {_describe(r)} has {k}: evaluate with images_per_prompt=5")
        if protocol == "imagereward":
            stat = protocols.mean_with_ci(scores, images_per_prompt=k, resamples=resamples)
        elif r["method"] == "base":
            continue
        else:
            if r["suite"] not in bases:
                raise RecordError(f"{_describe(r)}: --protocol {protocol} compares with the base model, whose record "
                                  "is not among these")
            base = bases[r["suite"]]
            _check_same_images(r, base)
            stat = protocols.win_rate(scores, base["evaluation"]["scores"][metric], images_per_prompt=k, median_of=k,
                                      higher_is_better=_higher(r, metric), resamples=resamples)
        rows.append({"suite": r["suite"], "method": r["method"], "budget": budget_label(r), "seed": r["seed"],
                     "images_per_prompt": k, f"{metric}_{protocol}": stat["mean"], "ci_low": stat["ci_low"],
                     "ci_high": stat["ci_high"], "prompts": stat["n"]})
    return pd.DataFrame(rows)


def metric_names(df: pd.DataFrame) -> list[str]:
    """The metrics of a `comparison_table`, in column order."""
    return [c[: -len("_ci_low")] for c in df.columns if c.endswith("_ci_low") and not c.endswith(("_win_ci_low",
                                                                                                   "_delta_ci_low"))]


def display_table(df: pd.DataFrame, higher_is_better: dict[str, bool], fmt: str = "md", digits: int = 3) -> pd.DataFrame:
    """Strings for humans: 'mean [lo, hi]' per metric, best per column bold (md/tex)."""
    metrics = metric_names(df)
    bold = {"md": "**{}**", "tex": "\\textbf{{{}}}", "plain": "{}"}[fmt]
    out = pd.DataFrame({"method": df["method"], "budget": df["budget"]})
    if "reward" in df:  # rows of methods that optimise a reward: one per reward
        out.insert(1, "reward", df["reward"].map(lambda v: v or "-"))
    if df["seed"].ne("-").any():  # a per-seed table; the base model has no training seed
        out["seed"] = df["seed"].map(lambda v: "-" if v == "-" or pd.isna(v) else f"{int(v)}")
    if df["suite"].nunique() > 1:
        out.insert(0, "suite", df["suite"])
    out["seeds"] = df["seeds"]
    out["NFE used"] = df["nfe"].map(lambda v: f"{v:.3g}")
    out["train s"] = df["train_seconds"].map(lambda v: f"{v:.0f}")
    if "inference_nfe_per_image" in df:  # trained and training-free methods on one compute axis
        out["inference NFE / image"] = df["inference_nfe_per_image"].map(lambda v: "-" if pd.isna(v) else f"{v:.4g}")
    if HACKING in df:  # `bench.results.reward_hacking.mark`
        out["reward hacking"] = [hacking_cell(h, fmt) for h in df[HACKING]]

    def ci(mean, low, high) -> str:
        return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    for name in metrics:
        values = df[name]
        best = values.max() if higher_is_better.get(name, True) else values.min()
        out[f"{name} (95% CI)"] = [bold.format(ci(m, lo, hi)) if m == best and fmt != "plain" else ci(m, lo, hi)
                                   for m, lo, hi in zip(values, df[f"{name}_ci_low"], df[f"{name}_ci_high"])]
        if f"{name}_win" in df:
            out[f"{name} win rate vs base"] = [
                "-" if pd.isna(w) else ci(w, lo, hi)
                for w, lo, hi in zip(df[f"{name}_win"], df[f"{name}_win_ci_low"], df[f"{name}_win_ci_high"])]
            out[f"{name} Δ vs base"] = [
                "-" if pd.isna(d) else ci(d, lo, hi)
                for d, lo, hi in zip(df[f"{name}_delta"], df[f"{name}_delta_ci_low"], df[f"{name}_delta_ci_high"])]
    return out


INVERSION_COLUMNS = ["guidance", "sampler", "latent_mse", "pixel_mse", "psnr", "nfe_invert", "nfe_reconstruct",
                     "stored_latents", "seconds_invert", "seconds_reconstruct", "overhead_ratio"]


def stored_state(record: dict) -> str:
    """What a sampler keeps between invert and reconstruct, per image in latents: "2", or "1 + 2N = 101"
    where it grows with the N steps; "-" for records made before it was counted."""
    if "stored_latents_fixed" not in record:
        return "-"
    fixed, per_step = record["stored_latents_fixed"], record["stored_latents_per_step"]
    if not per_step:
        return f"{fixed:.3g}"
    return f"{fixed:.3g} + {'' if per_step == 1 else f'{per_step:.3g}'}N = {record['stored_latents']:.3g}"


def inversion_table(records: list[dict]) -> pd.DataFrame:
    """One row per guidance scale and sampler of a `bench invert` result: error, NFE, stored state (per image,
    in latents, N = steps), seconds and overhead ratio (numbers, the stored state as text)."""
    df = pd.DataFrame(records).assign(stored_latents=[stored_state(r) for r in records])
    return df[INVERSION_COLUMNS]


def three_significant(df: pd.DataFrame) -> pd.DataFrame:
    """Floats as strings with 3 significant digits, everything else as is (for terminal and HTML tables)."""
    return df.map(lambda v: f"{v:.3g}" if isinstance(v, float) else str(v))


def to_latex(table: pd.DataFrame, caption: str) -> str:
    """A booktabs table (no pandas Styler/jinja needed)."""
    escape = {"_": "\\_", "%": "\\%", "&": "\\&", "Δ": "$\\Delta$"}

    def cell(value) -> str:
        text = str(value)
        for a, b in escape.items():
            text = text.replace(a, b) if not text.startswith("\\textbf") or a != "_" else text
        return text

    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{cell(caption)}}}",
             "\\begin{tabular}{" + "l" * 2 + "r" * (len(table.columns) - 2) + "}", "\\toprule",
             " & ".join(cell(c) for c in table.columns) + " \\\\", "\\midrule"]
    lines += [" & ".join(cell(v) for v in row) + " \\\\" for row in table.itertuples(index=False)]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def directions(records: list[dict]) -> dict[str, bool]:
    return {name: s["higher_is_better"] for r in records for name, s in r.get("scorers", {}).items()}


def _write(df: pd.DataFrame, display, out_dir: Path, stem: str, formats: tuple[str, ...], caption: str) -> list[Path]:
    """`df` as `stem`.csv (numbers), and `display(df, fmt)` as `stem`.md and `stem`.tex, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "md" in formats:
        written.append(out_dir / f"{stem}.md")
        write_text_atomic(written[-1], display(df, "md").to_markdown(index=False) + "\n")
    if "csv" in formats:
        written.append(out_dir / f"{stem}.csv")
        write_text_atomic(written[-1], df.to_csv(index=False, float_format="%.6g"))
    if "tex" in formats:
        written.append(out_dir / f"{stem}.tex")
        write_text_atomic(written[-1], to_latex(display(df, "tex"), caption or stem))
    return written


def write_tables(df: pd.DataFrame, higher_is_better: dict[str, bool], out_dir: Path, *, stem: str = "table",
                 formats: tuple[str, ...] = ("md", "csv", "tex"), caption: str = "") -> list[Path]:
    return _write(df, lambda d, fmt: display_table(d, higher_is_better, fmt), out_dir, stem, formats, caption)


def write_pairs(df: pd.DataFrame, out_dir: Path, *, stem: str = "pairs", formats: tuple[str, ...] = ("md", "csv", "tex"),
                caption: str = "") -> list[Path]:
    """`pairs_table`'s table as `stem`.md, .csv and .tex."""
    return _write(df, display_pairs, out_dir, stem, formats,
                  caption or "paired differences between methods (Holm-adjusted p over the table)")


def write_reward_hacking(df: pd.DataFrame, out_dir: Path, *, stem: str = "reward-hacking",
                         formats: tuple[str, ...] = ("md", "csv", "tex")) -> list[Path]:
    """`bench.results.reward_hacking.gains_table` as `stem`.md, .csv and .tex."""
    return _write(df, display_gains, out_dir, stem, formats, "proxy and ground-truth gains vs the base model")


def write_protocol(df: pd.DataFrame, out_dir: Path, *, stem: str, formats: tuple[str, ...] = ("md", "csv")) -> list[Path]:
    """A `protocol_table` as markdown (three significant digits) and CSV (full precision)."""
    written = []
    if "md" in formats:
        written.append(write_text_atomic(out_dir / f"{stem}.md", three_significant(df).to_markdown(index=False) + "\n"))
    if "csv" in formats:
        written.append(write_text_atomic(out_dir / f"{stem}.csv", df.to_csv(index=False, float_format="%.6g")))
    return written
