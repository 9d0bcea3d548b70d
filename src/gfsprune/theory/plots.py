"""Figures, drawn with matplotlib's object-oriented API onto an Agg canvas (no display and no
pyplot global state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gfsprune.io.atomic import write_atomic

__all__ = ["plot_rates"]

_LABELS = {
    "greedy_pretrained": "greedy, from pre-trained",
    "greedy_random": "greedy, from random weights",
    "random_subset": "random subset of pre-trained",
    "scratch": "trained from scratch",
    "backward": "backward elimination",
}
_STYLES = {
    "greedy_pretrained": {"color": "tab:red", "marker": "o"},
    "greedy_random": {"color": "tab:orange", "marker": "s"},
    "random_subset": {"color": "tab:gray", "marker": "^"},
    "scratch": {"color": "tab:blue", "marker": "D"},
    "backward": {"color": "tab:green", "marker": "v"},
}


def plot_rates(result: dict, path: str | Path) -> Path:
    """Draw the loss-vs-size curves of ``twolayer.rates_experiment`` on log-log axes.

    The slope fit range is shaded, each legend entry carries the fitted slope, and dotted
    guides of slope -1 and -2 start from the greedy curve at the left edge of the fit range.

    Args:
        result: The dictionary returned by ``rates_experiment``.
        path: Where to write the PNG.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = np.asarray(result["n"], dtype=float)
    lo, hi = result["fit_range"]
    fig = Figure(figsize=(7.0, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.axvspan(lo, hi, color="0.92", zorder=0, label=f"slope fit range n={lo}..{hi}")
    for name, loss in result["loss"].items():
        label = f"{_LABELS.get(name, name)} (slope {result['slopes'][name]:.2f})"
        ax.plot(n, loss, label=label, markersize=3.5, linewidth=1.4, **_STYLES.get(name, {}))
    anchor = float(np.interp(lo, n, result["loss"]["greedy_pretrained"]))
    guide = np.array([lo, hi], dtype=float)
    for power in (1, 2):
        ax.plot(guide, anchor * (guide / lo) ** -power, ":", color="black", linewidth=1.0)
        ax.annotate(
            f"$n^{{-{power}}}$",
            (hi, anchor * (hi / lo) ** -power),
            fontsize=9,
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
        )
    cfg = result["config"]
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="subnetwork size n (neurons)",
        ylabel="training loss (mean squared error)",
        title=f"Two-layer mean-field net: N={cfg['width']} neurons, m={cfg['points']} points, "
        f"d={cfg['dim']}, seed {result['seed']}",
    )
    ax.title.set_fontsize(10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
