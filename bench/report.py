"""Comparison tables from run records: terminal, markdown, CSV and LaTeX (booktabs).

One row per (suite, budget, method) by default; `group_by` chooses the grouping keys among
`suite`, `budget` and `seed`. The runs (training seeds) that fall in one row must have been evaluated
on the same images (prompts and seeds), and so must the suite's base model: each statistic is the mean
over runs and images, its 95% CI from a bootstrap over runs, then prompts (`bench.stats`), and the win
rate and mean change against the base model are paired per image (a multi-seed win rate is the mean of
the seeds' win rates).
Budget columns give the mean use (NFE and training seconds). In markdown and LaTeX the best value of
each metric column is bold (by the scorer's direction); the CSV keeps plain numbers with CI columns.
Every table is a pure function of the records: rows are sorted, numbers formatted with fixed digits.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch

from bench.progress import progress_bar
from bench.records import RecordError, read_record, write_text_atomic
from bench.stats import bootstrap_mean, paired_comparison

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


def load_records(paths: list[Path], *, skip_bad: bool = False, progress: bool = False) -> list[tuple[Path, dict]]:
    """Read records; a missing or corrupt one raises RecordError naming it unless `skip_bad`. Other JSON files
    (summaries, reports) are passed over."""
    out = []
    for path in progress_bar(paths, enabled=progress, desc="records"):
        try:
            record = read_record(path)
        except RecordError:
            if skip_bad or _other_json(path):
                continue
            raise
        if record.get("kind") == "alignment-run":
            out.append((path, record))
    return out


def _budget_label(record: dict) -> str:
    b = record["budget"]
    return "-" if record["method"] == "base" else f"{b['limit']:g}{b['unit']}"


def _row_key(record: dict, group_by: tuple[str, ...]) -> tuple:
    parts = {"suite": record["suite"], "budget": _budget_label(record), "seed": record["seed"]}
    return tuple(parts[k] if k in group_by else None for k in GROUP_KEYS) + (record["method"],)


def _describe(record: dict) -> str:
    seed = "" if record["seed"] is None else f", seed {record['seed']}"
    return f"{record['suite']} {record['method']} ({_budget_label(record)}{seed}, created {record.get('created', '?')})"


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


def comparison_table(records: list[dict], group_by: tuple[str, ...] = ("suite", "budget"),
                     metrics: list[str] | None = None, resamples: int = 2000) -> pd.DataFrame:
    """Numeric table: per row, metric mean/CI, win rate and Δ vs base with CIs, budget use, seeds."""
    unknown = set(group_by) - set(GROUP_KEYS)
    if unknown:
        raise ValueError(f"--group-by {sorted(unknown)}: choose from {', '.join(GROUP_KEYS)}")
    recorded = {name for r in records for name in r["evaluation"]["scores"]}
    missing = [name for name in metrics or [] if name not in recorded]
    if missing:
        raise ValueError(f"--metrics {', '.join(missing)}: not in these records (they have {', '.join(sorted(recorded))})")
    bases = _one_base_per_suite(records)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[_row_key(r, group_by)].append(r)
    rows = []
    for key, members in groups.items():
        first = members[0]
        for label, value in (("suites", lambda r: r["suite"]), ("budgets", _budget_label)):
            pooled = sorted({value(m) for m in members})
            if len(pooled) > 1:
                raise ValueError(f"--group-by {','.join(group_by)}: a {first['method']} row would pool different "
                                 f"{label} ({', '.join(pooled)}); add {label[:-1]} to --group-by")
        base = bases.get(first["suite"])
        for other in [*members[1:], *([base] if base is not None else [])]:
            _check_same_images(first, other)
        prompts = first["evaluation"]["prompts"]  # each image's prompt: the bootstrap's cluster
        names = metrics or list(first["metrics"])
        row = {"suite": first["suite"], "method": first["method"], "budget": _budget_label(first),
               "seed": key[2] if "seed" in group_by else "-", "seeds": len({m["seed"] for m in members}),
               "nfe": sum(m["budget"]["usage"]["nfe"] for m in members) / len(members),
               "train_seconds": sum(m["budget"]["seconds"] for m in members) / len(members),
               "_budget_sort": float("-inf") if first["method"] == "base" else first["budget"]["limit"]}
        for name in names:
            scores = torch.tensor([m["evaluation"]["scores"][name] for m in members], dtype=torch.float64)  # (S, N)
            stat = bootstrap_mean(scores, groups=prompts, resamples=resamples)
            row.update({f"{name}": stat["mean"], f"{name}_ci_low": stat["ci_low"], f"{name}_ci_high": stat["ci_high"],
                        f"{name}_n": stat["n"]})
            if base is not None and first["method"] != "base" and name in base["evaluation"]["scores"]:
                higher = first["scorers"][name]["higher_is_better"]
                win, delta = paired_comparison(scores, torch.tensor(base["evaluation"]["scores"][name]), groups=prompts,
                                               higher_is_better=higher, resamples=resamples)
                row.update({f"{name}_win": win["mean"], f"{name}_win_ci_low": win["ci_low"],
                            f"{name}_win_ci_high": win["ci_high"], f"{name}_delta": delta["mean"],
                            f"{name}_delta_ci_low": delta["ci_low"], f"{name}_delta_ci_high": delta["ci_high"]})
        rows.append(row)
    df = pd.DataFrame(rows)
    order = {"base": 0}
    df["_base_last"] = df["method"].map(lambda m: order.get(m, 1))
    df = df.sort_values(["suite", "_base_last", "_budget_sort", "budget", "method", "seed"], kind="stable")
    return df.drop(columns=["_base_last", "_budget_sort"]).reset_index(drop=True)


def _metric_names(df: pd.DataFrame) -> list[str]:
    return [c[: -len("_ci_low")] for c in df.columns if c.endswith("_ci_low") and not c.endswith(("_win_ci_low",
                                                                                                   "_delta_ci_low"))]


def display_table(df: pd.DataFrame, higher_is_better: dict[str, bool], fmt: str = "md", digits: int = 3) -> pd.DataFrame:
    """Strings for humans: 'mean [lo, hi]' per metric, best per column bold (md/tex)."""
    metrics = _metric_names(df)
    bold = {"md": "**{}**", "tex": "\\textbf{{{}}}", "plain": "{}"}[fmt]
    out = pd.DataFrame({"method": df["method"], "budget": df["budget"]})
    if df["seed"].ne("-").any():  # a per-seed table; the base model has no training seed
        out["seed"] = df["seed"].map(lambda v: "-" if v == "-" or pd.isna(v) else f"{int(v)}")
    if df["suite"].nunique() > 1:
        out.insert(0, "suite", df["suite"])
    out["seeds"] = df["seeds"]
    out["NFE used"] = df["nfe"].map(lambda v: f"{v:.3g}")
    out["train s"] = df["train_seconds"].map(lambda v: f"{v:.0f}")

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


INVERSION_COLUMNS = ["sampler", "latent_mse", "pixel_mse", "psnr", "nfe_invert", "nfe_reconstruct", "seconds_invert",
                     "seconds_reconstruct", "overhead_ratio"]


def inversion_table(records: list[dict]) -> pd.DataFrame:
    """One row per sampler of a `bench invert` result: error, NFE, seconds and overhead ratio (numbers)."""
    return pd.DataFrame(records)[INVERSION_COLUMNS]


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


def write_tables(df: pd.DataFrame, higher_is_better: dict[str, bool], out_dir: Path, *, stem: str = "table",
                 formats: tuple[str, ...] = ("md", "csv", "tex"), caption: str = "") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "md" in formats:
        written.append(out_dir / f"{stem}.md")
        write_text_atomic(written[-1], display_table(df, higher_is_better, "md").to_markdown(index=False) + "\n")
    if "csv" in formats:
        written.append(out_dir / f"{stem}.csv")
        write_text_atomic(written[-1], df.to_csv(index=False, float_format="%.6g"))
    if "tex" in formats:
        written.append(out_dir / f"{stem}.tex")
        write_text_atomic(written[-1], to_latex(display_table(df, higher_is_better, "tex"), caption or stem))
    return written
