"""Paper-ready figures with matplotlib: one colour-blind-safe style, labelled axes with units.

Every figure is a pure function of run records (alignment runs, and `bench invert` results). PNG and
PDF metadata carry no dates or software versions, so regenerating a figure gives identical bytes.

- `frontier`: a metric against the NFE each run used, per method, one point per budget (the
  efficiency frontier), with 95% CIs and the base model as a band;
- `win_rates`: paired win rate against the base model with 95% CIs, per method;
- `proxy_vs_oracle`: change of a proxy scorer against change of the oracle, per method, so that a
  proxy gain that is not a true gain (reward hacking) falls in the lower-right quadrant; its reward-hacking form
  (where runs optimised a reward) takes each run's own proxy, draws the diagonal and shades that quadrant;
- `training_curve`: an online method's training reward and validation ground truth against NFE, seeds overlaid;
- `inversion_error_vs_nfe`, `inversion_time_per_image`: from `bench invert`;
- `sample_grid`: the first evaluation images (same prompts and seeds) of every method.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from bench.core.records import atomic_output  # noqa: E402
from bench.results.reward_hacking import (  # noqa: E402
    SuiteMetrics,
    TrainingCurves,
    row_reward,
    running_mean,
    scatter_points,
    series_label,
    with_series_labels,
)

# Okabe & Ito (2008) colour-blind-safe palette.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
STYLE = {"figure.dpi": 150, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.alpha": 0.3, "savefig.bbox": "tight"}


def save(fig, path: Path) -> Path:
    """Save with fixed metadata (no dates) so the bytes depend only on the data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"CreationDate": None, "ModDate": None} if path.suffix == ".pdf" else {"Software": None}
    with atomic_output(path) as tmp:
        fig.savefig(tmp, metadata=metadata)
    plt.close(fig)
    return path


def _by_guidance(records: list[dict]) -> list[tuple[float, list[dict]]]:
    """Records grouped by guidance scale, ascending: one facet each."""
    scales = sorted({r["guidance"] for r in records})
    return [(w, [r for r in records if r["guidance"] == w]) for w in scales]


def inversion_error_vs_nfe(records: list[dict], path: Path) -> Path:
    """Reconstruction latent MSE (log scale) against NFE per image (invert + reconstruct), one point per sampler,
    one panel per guidance scale (shared axes; a sampler keeps its colour and marker across panels)."""
    facets = _by_guidance(records)
    names = list(dict.fromkeys(r["sampler"] for r in records))
    floor = min((r["latent_mse"] for r in records if r["latent_mse"] > 0), default=1e-30)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets), 3.0), sharex=True, sharey=True,
                                 squeeze=False)
        for ax, (guidance, rows) in zip(axes[0], facets):
            for r in rows:
                i = names.index(r["sampler"])
                mse = max(r["latent_mse"], floor * 1e-2)  # an exact 0 is drawn just below the smallest error
                # shrinking markers of different shapes keep coinciding samplers (ddim, npi, ...) visible
                ax.scatter(r["nfe_invert"] + r["nfe_reconstruct"], mse, color=PALETTE[i % len(PALETTE)],
                           label=r["sampler"], marker=MARKERS[i % len(MARKERS)], s=70 - 6 * i, zorder=3 + i)
            ax.set_yscale("log")
            ax.set_xlabel("UNet evaluations per image (invert + reconstruct)")
            ax.set_title(f"guidance {guidance:g}")
        axes[0][0].set_ylabel("reconstruction latent MSE")
        axes[0][-1].legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.suptitle(f"{records[0]['steps']} steps, {records[0]['dtype']}")
        return save(fig, path)


def inversion_time_per_image(records: list[dict], path: Path) -> Path:
    """Stacked bars: seconds per image to invert and to reconstruct, per sampler, one panel per guidance scale."""
    facets = _by_guidance(records)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets), 3.0), sharey=True, squeeze=False)
        for ax, (guidance, rows) in zip(axes[0], facets):
            names = [r["sampler"] for r in rows]
            invert = [r["seconds_invert"] / r["images"] for r in rows]
            recon = [r["seconds_reconstruct"] / r["images"] for r in rows]
            ax.bar(names, invert, color=PALETTE[0], label="invert")
            ax.bar(names, recon, bottom=invert, color=PALETTE[1], label="reconstruct")
            ax.set_title(f"guidance {guidance:g}")
            ax.tick_params(axis="x", rotation=30)
        axes[0][0].set_ylabel("seconds per image")
        axes[0][0].legend(fontsize=7, frameon=False)
        return save(fig, path)


def _color(method: str, methods: list[str]) -> str:
    return PALETTE[sorted(methods).index(method) % len(PALETTE)]


def _largest_budget_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per method, the row of its largest budget, by NFE used (comparable across budget units; base excluded)."""
    runs = with_series_labels(table[table["method"] != "base"])
    return runs.sort_values(["method", "nfe", "budget"], kind="stable").groupby("method", sort=True).tail(1)


def _budget_note(rows: pd.DataFrame) -> str:
    budgets = sorted(set(rows["budget"]))
    return f"at {budgets[0]}" if len(budgets) == 1 else "at each method's largest budget"


def frontier(table: pd.DataFrame, metric: str, path: Path, unit_label: str = "UNet evaluations used (NFE)") -> Path:
    """Metric against NFE used, one line per method over its budgets, 95% CIs; base as a band."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        base = table[table["method"] == "base"]
        if len(base):
            b = base.iloc[0]
            ax.axhspan(b[f"{metric}_ci_low"], b[f"{metric}_ci_high"], color="0.85", zorder=0)
            ax.axhline(b[metric], color="0.4", linestyle="--", linewidth=1, label="base")
        runs = with_series_labels(table[table["method"] != "base"])
        methods = sorted(runs["method"].unique())
        for method in methods:
            rows = runs[runs["method"] == method].sort_values("nfe")
            yerr = [rows[metric] - rows[f"{metric}_ci_low"], rows[f"{metric}_ci_high"] - rows[metric]]
            ax.errorbar(rows["nfe"], rows[metric], yerr=yerr, marker="o", markersize=3.5, capsize=2, linewidth=1.2,
                        color=_color(method, methods), label=method)
        if runs["nfe"].max() > 4 * max(runs["nfe"].min(), 1):
            ax.set_xscale("log")
        ax.set_xlabel(unit_label)
        ax.set_ylabel(f"{metric} (mean, 95% CI)")
        ax.legend(fontsize=7, frameon=False, ncol=2)
        return save(fig, path)


def win_rates(table: pd.DataFrame, metric: str, path: Path) -> Path:
    """Paired win rate vs the base model (95% CI), per method at its largest budget."""
    rows = _largest_budget_rows(table).sort_values(f"{metric}_win")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 0.35 * len(rows) + 1.0))
        methods = sorted(rows["method"])
        xerr = [rows[f"{metric}_win"] - rows[f"{metric}_win_ci_low"], rows[f"{metric}_win_ci_high"] - rows[f"{metric}_win"]]
        ax.barh(rows["method"], rows[f"{metric}_win"], xerr=xerr, capsize=2,
                color=[_color(m, methods) for m in rows["method"]])
        ax.axvline(0.5, color="0.3", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"win rate vs base on {metric} {_budget_note(rows)} (paired, 95% CI)")
        return save(fig, path)


def proxy_vs_oracle(table: pd.DataFrame, proxy: str, oracle: str, path: Path,
                    metrics: SuiteMetrics | None = None) -> Path:
    """Δ proxy vs Δ oracle against the base model (95% CIs), per method at its largest budget.

    With `metrics` (the reward-hacking figure, `bench.results.reward_hacking.scatter_points`): each run's proxy is
    the reward it optimised where that is an evaluated proxy, else `proxy`; both axes are gains (better > 0); the
    diagonal (equal gains) is drawn, the quadrant "proxy up, oracle down" shaded and the runs that hack a proxy
    ringed."""
    rows = _largest_budget_rows(table)
    points = scatter_points(rows, proxy, oracle, metrics)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 3.4) if metrics is None else (5.2, 3.8))
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.axvline(0, color="0.3", linewidth=0.8)
        methods = sorted(rows["method"])
        for p in points:
            ax.errorbar(p["x"], p["y"], xerr=[[p["x"] - p["x_low"]], [p["x_high"] - p["x"]]],
                        yerr=[[p["y"] - p["y_low"]], [p["y_high"] - p["y"]]],
                        fmt="o", markersize=4, capsize=2, color=_color(p["label"], methods), label=p["label"])
        if metrics is None:
            ax.set_xlabel(f"Δ {proxy} vs base (proxy)")
            ax.set_ylabel(f"Δ {oracle} vs base (ground truth)")
            ax.set_title(f"{_budget_note(rows)}; lower right: the proxy improves, the truth does not", fontsize=7)
            ax.legend(fontsize=7, frameon=False)
        else:
            _reward_hacking_overlay(ax, points, proxy, oracle, _budget_note(rows))
        return save(fig, path)


def _reward_hacking_overlay(ax, points: list[dict], proxy: str, oracle: str, note: str) -> None:
    """The diagonal, the shaded quadrant "proxy up, oracle down", rings on the runs that hack and the labels."""
    hacking = [p for p in points if p["hacked"]]
    if hacking:
        ax.scatter([p["x"] for p in hacking], [p["y"] for p in hacking], s=140, facecolors="none",
                   edgecolors=PALETTE[7], linewidths=1.2, zorder=4, label="reward hacking (both CIs exclude 0)")
    xs = [v for p in points for v in (p["x_low"], p["x_high"], 0.0)]
    ys = [v for p in points for v in (p["y_low"], p["y_high"], 0.0)]
    pad_x, pad_y = 0.08 * (max(xs) - min(xs) or 1.0), 0.08 * (max(ys) - min(ys) or 1.0)
    (x0, x1), (y0, y1) = (min(xs) - pad_x, max(xs) + pad_x), (min(ys) - pad_y, max(ys) + pad_y)
    ax.fill_between([0, x1], y0, 0, color=PALETTE[3], alpha=0.08, linewidth=0, zorder=0)
    ax.text(x1, y0, f"proxy up, {oracle} down:\nreward hacking", ha="right", va="bottom", fontsize=7, color=PALETTE[3])
    low, high = max(x0, y0), min(x1, y1)
    if low < high:
        ax.plot([low, high], [low, high], color="0.5", linestyle=":", linewidth=1, label="equal gains")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    shown = sorted({p["proxy"] for p in points})
    ax.set_xlabel(f"gain in the proxy vs base (Δ, 95% CI): the reward optimised, else {proxy}"
                  + (f"\n(proxies shown: {', '.join(shown)})" if len(shown) > 1 else ""))
    ax.set_ylabel(f"gain in {oracle} vs base (Δ, 95% CI; ground truth)")
    ax.set_title(f"proxy vs ground truth, {note}", fontsize=8)
    ax.legend(fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))


def training_curve(curves: TrainingCurves, path: Path) -> Path:
    """An online method's runs on one reward: the training reward (mean of each collection, faint, and its
    `running_mean`) and, where evaluated, the reward on the validation prompts against NFE (left); the ground truth on
    the validation prompts (right); one colour per training seed."""
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(7.6, 3.0), sharex=True)
        for i, run in enumerate(curves.runs):
            color, seed = PALETTE[i % len(PALETTE)], "" if run.seed is None else f"seed {run.seed}: "
            left.plot(run.nfe, run.reward, color=color, linewidth=0.6, alpha=0.35)
            left.plot(run.nfe, running_mean(run.reward), color=color, linewidth=1.4,
                      label=f"{seed}training prompts (running mean)")
            if run.val_reward:
                left.plot(run.val_nfe, run.val_reward, color=color, linestyle="--", marker="o", markersize=3,
                          linewidth=1, label=f"{seed}validation prompts")
            right.plot(run.val_nfe, run.val_primary, color=color, marker="o", markersize=3, linewidth=1.2,
                       label=f"{seed}validation prompts")
        left.set_ylabel(f"reward: {curves.reward} (mean)")
        right.set_ylabel(f"{curves.primary} (mean; ground truth)")
        if not any(run.val_primary for run in curves.runs):
            right.text(0.5, 0.5, "not evaluated during training\n(--curve-every 0)", ha="center", va="center",
                       transform=right.transAxes, fontsize=8, color="0.4")
        for ax in (left, right):
            ax.set_xlabel("UNet evaluations used (NFE)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, frameon=False)
        fig.suptitle(f"{curves.method} trained on {curves.reward} ({curves.suite})", fontsize=9)
        return save(fig, path)


def sample_grid(records: list[dict], path: Path, columns: int = 8) -> Path:
    """The first evaluation images of the base model and of each method at its largest budget and lowest
    seed: one row each, the same prompts and sampling seeds per column."""
    def rank(r: dict) -> tuple:  # larger budget first, then lower seed
        return (r["budget"]["limit"] if r["method"] != "base" else 0, -(r["seed"] or 0))

    chosen: dict[str, dict] = {}  # by method and the reward it optimised (`series_label`)
    for r in records:
        label = series_label(r["method"], row_reward(r))
        if r.get("samples", {}).get("png_base64") and (label not in chosen or rank(r) > rank(chosen[label])):
            chosen[label] = r
    runs = sorted(chosen.values(), key=lambda r: (r["method"] != "base", r["method"]))
    k = min(columns, min(len(r["samples"]["png_base64"]) for r in runs))
    height = 0.9 * len(runs) + 0.5
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, axes = plt.subplots(len(runs), k, figsize=(0.9 * k + 1.0, height), squeeze=False)
        fig.subplots_adjust(top=1 - 0.4 / height, bottom=0.1 / height, hspace=0.08, wspace=0.08)
        for i, r in enumerate(runs):
            for j in range(k):
                image = Image.open(io.BytesIO(base64.b64decode(r["samples"]["png_base64"][j])))
                ax = axes[i][j]
                ax.imshow(image, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    budget = f"{r['budget']['limit']:g}{r['budget']['unit']}"
                    name = series_label(r["method"], row_reward(r))
                    label = name if r["method"] == "base" else f"{name}\n{budget} s{r['seed']}"
                    ax.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
        fig.suptitle("same prompts and seeds per column", fontsize=7)
        return save(fig, path)
