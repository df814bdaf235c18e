"""The comparison tables `bench run` leaves in its run directory and `bench report` writes, from run records.

Both are built with `bench.results.report` (comparison, paired and protocol tables) and return what they wrote
beside the tables to show on a terminal, so a Python caller gets the same files as the command line.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.core.records import read_record
from bench.results.report import (
    PROTOCOLS,
    comparison_table,
    directions,
    display_pairs,
    display_table,
    find_records,
    load_records,
    pairs_table,
    protocol_table,
    three_significant,
    write_pairs,
    write_protocol,
    write_reward_hacking,
    write_tables,
)
from bench.results.reward_hacking import display_gains, gains_table, statements, suite_metrics

FORMATS = ("md", "csv", "tex")


def write_run_tables(paths: list[Path], run_dir: Path, metric: str) -> pd.DataFrame:
    """The records at `paths` of one `bench run` compared on `metric` per suite, budget and seed, written as
    run_dir/table.md, .csv and .tex; returns the table as plain text cells."""
    records = [read_record(p) for p in paths]
    table = comparison_table(records, group_by=("suite", "budget", "seed"), metrics=[metric])
    higher = directions(records)
    write_tables(table, higher, run_dir, caption=f"{records[0]['suite']}: {metric}")
    return display_table(table, higher, "plain")


def write_report(paths: list[Path], out: Path, *, group_by: tuple[str, ...] = ("suite", "budget"),
                 metrics: list[str] | None = None, formats: tuple[str, ...] = FORMATS, skip_bad: bool = False,
                 pairs: bool = False, protocol: str | None = None,
                 progress: bool = False) -> tuple[list[Path], list[tuple[str, pd.DataFrame]]]:
    """`bench report`: the comparison table of the run records under `paths` (rows by `group_by`, `metrics`
    default: all recorded; a row per method and the reward it optimised), and where a row optimised a reward or hacks
    a proxy the proxy and ground-truth gains side by side (`bench.results.reward_hacking`: reward-hacking.md, .csv,
    .tex); with `pairs` every two methods paired; with `protocol` (`PROTOCOLS`) each run's
    `metrics` (default: the primary metric) as that paper reports it. Every table is computed before any file is
    written into `out` in `formats`; returns (the files written, (title, table as text) to show). ValueError or
    KeyError for records these tables cannot be made from."""
    records = [r for _, r in load_records(find_records(paths), skip_bad=skip_bad, progress=progress)]
    if not records:
        raise ValueError(f"no alignment run records in {', '.join(map(str, paths))}")
    table = comparison_table(records, group_by, metrics)
    paired = pairs_table(records, metrics) if pairs else None
    by_protocol = {m: protocol_table(records, protocol, m)
                   for m in (metrics or [records[0]["config"]["metrics"][0]])} if protocol else {}
    gains = gains_table(table, records)  # rows that optimised a reward or hack a proxy: proxy and truth gains
    higher = directions(records)
    written = write_tables(table, higher, out, formats=formats, caption="comparison under equal compute budgets")
    shown = [(f"{len(records)} run records", display_table(table, higher, "plain"))]
    if len(gains):
        written += write_reward_hacking(gains, out, formats=formats)
        shown.append(("reward hacking: proxy and ground-truth gains vs the base model", display_gains(gains, "plain")))
        for suite in gains["suite"].unique():
            sentences = statements(table[table["suite"] == suite],
                                   suite_metrics([r for r in records if r["suite"] == suite], table))
            shown.append((f"{suite}: reward hacking in words", pd.DataFrame({"statement": sentences})))
    if paired is not None:
        written += write_pairs(paired, out, formats=formats)
        shown.append(("paired differences between methods (Holm-adjusted p)", display_pairs(paired, "plain")))
    for metric, protocol_rows in by_protocol.items():
        written += write_protocol(protocol_rows, out, stem=f"protocol-{protocol}-{metric}", formats=formats)
        shown.append((f"{metric} by the {protocol} protocol: {PROTOCOLS[protocol]}", three_significant(protocol_rows)))
    return written, shown


def eval_table(record: dict) -> pd.DataFrame:
    """A `bench eval` record's aggregates: one row per metric with mean, 95% CI, n, direction and scale."""
    rows = []
    for name, stat in record["aggregates"].items():
        scorer = record["scorers"][name]
        rows.append({"metric": name, "mean": f"{stat['mean']:.4g}", "95% CI": f"[{stat['ci_low']:.4g}, {stat['ci_high']:.4g}]",
                     "n": stat["n"], "better": "higher" if scorer["higher_is_better"] else "lower", "scale": scorer["scale"]})
    return pd.DataFrame(rows)


def weights_table(rows: list[dict]) -> pd.DataFrame:
    """`metrics.build.weight_rows` for the terminal: metric, file (and its hub repo), where it was found ("missing"),
    size and SHA256."""
    out = []
    for row in rows:
        if row["file"] is None:
            out.append({"metric": row["metric"], "file": "(none needed)", "found at": "", "size": "", "sha256": ""})
            continue
        label = row["file"] if row["file"].endswith("(model directory)") else f"{row['file']}\n{row['repo']}"
        out.append({"metric": row["metric"], "file": label, "found at": row["path"] or "missing",
                    "size": "" if row["bytes"] is None else f"{row['bytes'] / 2**20:.1f} MiB", "sha256": row["sha256"] or ""})
    return pd.DataFrame(out)
