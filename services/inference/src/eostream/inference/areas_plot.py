"""A plot of class areas over time (matplotlib, the maps' class colours, a legend)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np

from eostream.inference.writer import UNCERTAIN_NAME


def plot_areas(
    dates: Sequence[str],
    names: Sequence[str],
    colours: Sequence[str],
    km2: Sequence[Sequence[float]],
    out: Path,
    title: str,
) -> None:
    """One line per class (and uncertain) with any area; ``km2[t][c]`` is date t, class c.
    Needs matplotlib (``eostream-inference[maps]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    days = np.array([date.fromisoformat(d) for d in dates], dtype="datetime64[D]")
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=110)
    for c, (name, colour) in enumerate(zip(names, colours, strict=True)):
        series = [row[c] for row in km2]
        if not any(series):
            continue
        uncertain = name == UNCERTAIN_NAME  # its map colour is too light for a line
        axes.plot(
            days, series, marker="o", label=name, linewidth=1.8,
            color="#8c8c8c" if uncertain else colour, linestyle="--" if uncertain else "-",
        )  # fmt: skip
    axes.set_ylabel("area (km²)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m"))  # type: ignore[no-untyped-call]
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.autofmt_xdate()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
