"""The files and tables of an inversion benchmark (`bench invert`, `bench speed`), from its `invert` record.

`write_inversion` writes what `bench invert --out DIR` leaves in DIR: `invert.json` (the record, which the
leaderboard reads from `results/runs/*/`), `table.md` (`bench.results.report.inversion_table`) and the two
figures of `bench.results.figures`. `speed_table` is `bench speed`'s view of the same record.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.core.records import write_json_atomic, write_text_atomic
from bench.results.figures import inversion_error_vs_nfe, inversion_time_per_image
from bench.results.report import inversion_table, stored_state


def write_inversion(record: dict, out: Path) -> pd.DataFrame:
    """Write `record` as out/invert.json, its table as out/table.md and its figures error_vs_nfe.png and
    time_per_image.png; returns the table (numbers, one row per guidance scale and sampler)."""
    write_json_atomic(out / "invert.json", record)
    table = inversion_table(record["records"])
    write_text_atomic(out / "table.md", table.to_markdown(index=False, floatfmt=".3g") + "\n")
    inversion_error_vs_nfe(record["records"], out / "error_vs_nfe.png")
    inversion_time_per_image(record["records"], out / "time_per_image.png")
    return table


def speed_table(record: dict, samplers: list[str]) -> pd.DataFrame:
    """One row per sampler in `samplers` of a `bench.harness.invert.speed_record`: seconds per image to invert and
    to reconstruct, time relative to DDIM, overhead over the compute floor and stored state (as text)."""
    rows = [{"sampler": r["sampler"], "s/image invert": f"{r['seconds_invert'] / r['images']:.4f}",
             "s/image reconstruct": f"{r['seconds_reconstruct'] / r['images']:.4f}",
             "time vs ddim": f"{r['time_vs_ddim']:.3f}", "overhead vs floor": f"{r['overhead_ratio']:.3f}",
             "stored latents/image": stored_state(r)}
            for r in record["records"] if r["sampler"] in samplers]
    return pd.DataFrame(rows, columns=["sampler", "s/image invert", "s/image reconstruct", "time vs ddim",
                                       "overhead vs floor", "stored latents/image"])
