"""One figure style for every plot: paper column width, readable fonts, PNG + PDF output."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; never opens a window
import matplotlib.pyplot as plt  # noqa: E402

COLUMN_WIDTH_IN = 3.35  # single column of a two-column paper (ICML/NeurIPS ~3.25-3.5 in)
RC = {
    "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "legend.fontsize": 6.5,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "lines.linewidth": 1.2, "lines.markersize": 3.5,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "axes.spines.top": False,
    "axes.spines.right": False, "savefig.dpi": 200, "savefig.bbox": "tight", "pdf.fonttype": 42,
}


@contextmanager
def paper_style() -> Iterator[None]:
    with plt.rc_context(RC):
        yield


def new_figure(n_cols: int = 1, height_in: float = 2.4, width_in: float = COLUMN_WIDTH_IN, *, n_rows: int = 1,
               sharex: bool = False):
    return plt.subplots(n_rows, n_cols, figsize=(width_in, height_in), squeeze=False, layout="constrained",
                        sharex=sharex)


def save(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Write name.png and name.pdf; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def budget_colors(n: int):
    return plt.get_cmap("viridis")(np.linspace(0.05, 0.9, max(n, 1)))


# One colour per mean recurrence, the same in every figure (the published grids' values; red is
# kept for the fixed-depth baseline).
MU_COLORS = {1: "C0", 2: "C1", 3: "C8", 4: "C2", 6: "C9", 8: "C4", 10: "C5", 12: "C6", 16: "C7", 32: "C5", 64: "C6"}


def mu_color(mu_rec: float):
    return MU_COLORS.get(int(mu_rec), plt.get_cmap("viridis")(min(np.log2(max(mu_rec, 1.0)) / 6.0, 1.0)))

