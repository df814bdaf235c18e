"""Comparison tables from run records (terminal, markdown, CSV)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _ci(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "-"
    return f"{stat['mean']:.{digits}f} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def runs_table(records: list[dict], metric: str) -> pd.DataFrame:
    """One row per run: budget used/limit, training time, the metric with its CI, and vs-base stats."""
    rows = []
    for r in records:
        budget = r["budget"]
        rows.append({
            "method": r["method"],
            "seed": "-" if r["seed"] is None else r["seed"],
            f"used/limit ({budget['unit']})": f"{budget['used']:g}/{budget['limit']:g}",
            "train s": f"{budget['seconds']:.0f}",
            f"{metric} (95% CI)": _ci(r["metrics"].get(metric)),
            "win rate vs base": _ci(r.get("win_rate_vs_base", {}).get(metric)),
            "Δ vs base": _ci(r.get("delta_vs_base", {}).get(metric)),
        })
    return pd.DataFrame(rows)


def write_tables(df: pd.DataFrame, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.md").write_text(df.to_markdown(index=False) + "\n")
    df.to_csv(out_dir / "table.csv", index=False)
