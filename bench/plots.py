"""Figures with matplotlib: one colour-blind-safe style, labelled axes with units, reproducible bytes.

Every figure is a pure function of records. PNG and PDF metadata dates are fixed (`metadata=` with no
creation date) so that regenerating a figure gives identical bytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Okabe & Ito (2008) colour-blind-safe palette.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
STYLE = {"figure.dpi": 150, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.alpha": 0.3, "savefig.bbox": "tight"}


def save(fig, path: Path) -> Path:
    """Save with fixed metadata (no dates) so the bytes depend only on the data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"CreationDate": None, "ModDate": None} if path.suffix == ".pdf" else {"Software": None}
    fig.savefig(path, metadata=metadata)
    plt.close(fig)
    return path


def inversion_error_vs_nfe(records: list[dict], path: Path) -> Path:
    """Reconstruction latent MSE (log scale) against NFE per image (invert + reconstruct), one point per sampler."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        floor = min((r["latent_mse"] for r in records if r["latent_mse"] > 0), default=1e-30)
        for i, r in enumerate(records):
            mse = max(r["latent_mse"], floor * 1e-2)  # an exact 0 is drawn just below the smallest error
            ax.scatter(r["nfe_invert"] + r["nfe_reconstruct"], mse, color=PALETTE[i % len(PALETTE)], label=r["sampler"],
                       zorder=3)
        ax.set_yscale("log")
        ax.set_xlabel("UNet evaluations per image (invert + reconstruct)")
        ax.set_ylabel("reconstruction latent MSE")
        ax.set_title(f"{records[0]['steps']} steps, guidance {records[0]['guidance']:g}, {records[0]['dtype']}")
        ax.legend(fontsize=7, frameon=False)
        return save(fig, path)


def inversion_time_per_image(records: list[dict], path: Path) -> Path:
    """Stacked bars: seconds per image to invert and to reconstruct, per sampler."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        names = [r["sampler"] for r in records]
        invert = [r["seconds_invert"] / r["images"] for r in records]
        recon = [r["seconds_reconstruct"] / r["images"] for r in records]
        ax.bar(names, invert, color=PALETTE[0], label="invert")
        ax.bar(names, recon, bottom=invert, color=PALETTE[1], label="reconstruct")
        ax.set_ylabel("seconds per image")
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=7, frameon=False)
        return save(fig, path)
