"""The set metrics of the leaderboard (FD, precision/recall/density/coverage, Vendi; `metrics.sets`), pooled over
training seeds, with their change against the base model and the sentences that say what the intervals support.

A record holds each set metric's value on its evaluated images with a 95% interval over prompts (`SetMetric.evaluate`:
a grouped jackknife for FD and PRDC, a cluster bootstrap for Vendi), computed from features the record does not keep.
Pooling the S seeds of a row therefore uses the records' numbers alone:

- value: the mean of the seeds' values, x̄ = (1/S) Σ_s x_s;
- interval: x̄ − (h⁻ + t), x̄ + (h⁺ + t), with h⁻ = mean_s(x_s − lo_s) and h⁺ = mean_s(hi_s − x_s) the seeds' mean
  half-widths (the evaluation's sampling over prompts) and t = 1.96 · sd_s(x_s) / √S (ddof 1; 0 for one seed) the
  spread between training seeds, which the per-image tables' bootstrap over seeds also covers. The seeds' prompt
  errors share the prompts, so they are positively correlated; whatever their correlation,
  SD((1/S) Σ X_s) ≤ (1/S) Σ SD(X_s) (Minkowski), and √(a + b) ≤ √a + √b adds the seeds' term, so the interval is
  conservative for the evaluation's part (the seed term, from S values, is as approximate as any interval over 3
  seeds);
- Δ vs the base model: x̄ − b, with the interval [Δ − (h⁻ + t + b⁺), Δ + (h⁺ + t + b⁻)] (b⁻/b⁺ the base's lower
  and upper half-widths; the base model has no training seed): SD(X − B) ≤ SD(X) + SD(B) for any correlation, so it
  is conservative too, and a Δ called significant here would be so under any dependence between the two evaluations
  (same prompts and noise).

Every interval is thus wider than a paired resampling of the features would give: "no detectable change" in these
tables can hide a real one; a change they call significant is one.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd
import torch

from bench.results.report import budget_label
from bench.results.reward_hacking import row_reward, series_label
from bench.results.wording import name_list

ROW_KEYS = ("suite", "method", "reward", "budget")


def set_values(records: list[dict]) -> dict[str, dict]:
    """"METRIC/VALUE" (e.g. "fd-toyclip/fd") -> its description (`higher_is_better`, scale), over every record that
    has set metrics, in the order the records list them."""
    out: dict[str, dict] = {}
    for record in records:
        for metric, described in (record.get("set_metric_descriptions") or {}).items():
            for value, about in described.get("values", {}).items():
                out.setdefault(f"{metric}/{value}", about)
    return out


def _pooled(entries: list[dict]) -> tuple[float, float, float]:
    """(x̄, h⁻ + t, h⁺ + t) of the seeds' {value, ci_low, ci_high} (module docstring)."""
    values = torch.tensor([e["value"] for e in entries], dtype=torch.float64)
    spread = 1.96 * values.std().item() / len(entries) ** 0.5 if len(entries) > 1 else 0.0
    lower = sum(e["value"] - e["ci_low"] for e in entries) / len(entries)
    upper = sum(e["ci_high"] - e["value"] for e in entries) / len(entries)
    return values.mean().item(), lower + spread, upper + spread


def set_metric_table(records: list[dict]) -> pd.DataFrame:
    """One row per suite, method (with the reward it optimised) and budget, its seeds pooled (module docstring): per
    set value V, columns V, V_ci_low, V_ci_high and, for a method, V_delta, V_delta_ci_low, V_delta_ci_high against
    its suite's base model. Records without set metrics are left out; an empty frame if none has them."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        if record.get("set_metrics"):
            groups[(record["suite"], record["method"], row_reward(record), budget_label(record))].append(record)
    names = set_values(records)
    base = {key[0]: members for key, members in groups.items() if key[1] == "base"}
    rows = []
    for key, members in groups.items():
        row = dict(zip(ROW_KEYS, key)) | {"seeds": len({m["seed"] for m in members}),
                                          "_limit": float("-inf") if key[1] == "base" else members[0]["budget"]["limit"]}
        for name in names:
            metric, value = name.split("/")
            entries = [m["set_metrics"][metric]["values"][value] for m in members
                       if value in m["set_metrics"].get(metric, {}).get("values", {})]
            if len(entries) != len(members):
                continue  # a seed without it: the row does not pool it
            mean, low, high = _pooled(entries)
            row.update({name: mean, f"{name}_ci_low": mean - low, f"{name}_ci_high": mean + high})
            base_entries = [m["set_metrics"].get(metric, {}).get("values", {}).get(value) for m in base.get(key[0], [])]
            if key[1] != "base" and base_entries and None not in base_entries:
                b, b_low, b_high = _pooled(base_entries)
                delta = mean - b
                row.update({f"{name}_delta": delta, f"{name}_delta_ci_low": delta - (low + b_high),
                            f"{name}_delta_ci_high": delta + (high + b_low)})
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df = df.sort_values(["suite", "_limit", "budget", "method", "reward"], kind="stable")
    return df.drop(columns="_limit").reset_index(drop=True)


def display_set_table(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Strings for humans: per set value 'mean [lo, hi]' and, for methods, 'Δ vs base [lo, hi]'."""
    out = pd.DataFrame({"method": [series_label(m, r) for m, r in zip(df["method"], df["reward"])],
                        "budget": df["budget"], "seeds": df["seeds"]})
    for name in (c for c in df.columns if f"{c}_ci_low" in df.columns and not c.endswith("_delta")):
        out[f"{name} (95% CI)"] = [f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
                                   for m, lo, hi in zip(df[name], df[f"{name}_ci_low"], df[f"{name}_ci_high"])]
        if f"{name}_delta" in df:
            out[f"{name} Δ vs base"] = ["-" if pd.isna(d) else f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
                                        for d, lo, hi in zip(df[f"{name}_delta"], df[f"{name}_delta_ci_low"],
                                                             df[f"{name}_delta_ci_high"])]
    return out


def diversity_statements(sets: pd.DataFrame, table: pd.DataFrame, primary: str, records: list[dict],
                         *, digits: int = 3) -> list[str]:
    """Per budget, of the methods whose `primary` Δ vs base lies above 0 (`table`: the suite's comparison table),
    which pay for it in a set value that measures distance or diversity: a significant move in its worse direction
    (the conservative interval excludes 0), named with its Δ; and which show no detectable such change."""
    if sets.empty or f"{primary}_delta" not in table:
        return []
    about = set_values(records)
    watched = [n for n in about if n.split("/")[1] in ("fd", "vendi")]  # distance to the reference; diversity
    gains = table[(table["method"] != "base") & (table[f"{primary}_delta_ci_low"] > 0)]
    out = []
    for budget in dict.fromkeys(gains["budget"]):
        costs, clean = [], []
        for r in gains[gains["budget"] == budget].to_dict("records"):
            reward = r.get("reward") if isinstance(r.get("reward"), str) else ""
            match = sets[(sets["method"] == r["method"]) & (sets["budget"] == budget) & (sets["reward"] == reward)]
            if match.empty:
                continue
            row = match.iloc[0]
            paid = []
            for name in watched:
                if f"{name}_delta" not in row or pd.isna(row[f"{name}_delta"]):
                    continue
                worse = row[f"{name}_delta_ci_high"] < 0 if about[name]["higher_is_better"] else row[f"{name}_delta_ci_low"] > 0
                if worse:
                    paid.append(f"{name} Δ {row[f'{name}_delta']:+.{digits}f} [{row[f'{name}_delta_ci_low']:+.{digits}f}, "
                                f"{row[f'{name}_delta_ci_high']:+.{digits}f}]")
            label = series_label(r["method"], reward)
            (costs if paid else clean).append(f"{label} ({'; '.join(paid)})" if paid else label)
        if not costs and not clean:
            continue
        moves = " or ".join(f"{'fall' if about[n]['higher_is_better'] else 'rise'} in {n.split('/')[0]}" for n in watched)
        parts = []
        if costs:
            parts.append(f"{name_list(costs)} {'pay' if len(costs) > 1 else 'pays'} for it in diversity or distance "
                         "to the reference")
        if clean:
            parts.append(f"{name_list(clean)} {'show' if len(clean) > 1 else 'shows'} no detectable {moves} "
                         "(conservative intervals)")
        out.append(f"At {budget}, of the methods that raise {primary} over the base model, " + "; ".join(parts) + ".")
    return out
