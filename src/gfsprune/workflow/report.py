"""The comparison's files: ``results.json``, ``report.md`` and two PNG figures.

The sentences of ``report.md`` are derived from the numbers (which method leads, by how
much, at what cost), never written in advance. Figures use matplotlib's object-oriented API
on an Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gfsprune.io.atomic import write_atomic, write_json, write_text
from gfsprune.io.results import RESULTS_FILE
from gfsprune.plan import LayerPlan
from gfsprune.workflow.compare import Comparison

__all__ = ["format_table", "plot_accuracy", "plot_widths", "summarize", "write_report"]

_LABELS = {
    "gfs": "greedy forward (gfs)",
    "l1": "L1 magnitude",
    "bn": "BN scale",
    "taylor": "Taylor",
    "random": "random",
    "backward": "greedy backward",
    "scratch": "from scratch",
}


def format_table(results: Mapping) -> str:
    """The results as a Markdown table, one row per method after a row for the base model.

    Example:
        >>> row = {"macs": 5, "params": 2, "acc_pruned": 0.5, "loss_pruned": 1.0,
        ...        "acc_finetuned": 0.9, "loss_finetuned": 0.3, "seconds": 0.1}
        >>> base = {"acc": 0.95, "loss": 0.2, "macs": 10, "params": 4}
        >>> table = format_table({"base": base, "methods": {"gfs": {**row, "latency_b64": 2e-3}}})
        >>> [cell.strip() for cell in table.splitlines()[3].split("|")[1:-1]]
        ['gfs', '5', '2', '50.00%', '1.0000', '90.00%', '0.3000', '0.10', '2.00']
    """
    base = results["base"]
    rows = [
        [
            "base",
            f"{base['macs']:,}",
            f"{base['params']:,}",
            _pct(base["acc"]),
            f"{base['loss']:.4f}",
            "",
            "",
            "",
            _ms(base),
        ]
    ]
    for name, r in results["methods"].items():
        rows.append(
            [
                name,
                f"{r['macs']:,}",
                f"{r['params']:,}",
                _pct(r["acc_pruned"]),
                f"{r['loss_pruned']:.4f}",
                _pct(r["acc_finetuned"]),
                f"{r['loss_finetuned']:.4f}",
                f"{r['seconds']:.2f}",
                _ms(r),
            ]
        )
    header = [
        "method",
        "MACs",
        "params",
        "acc pruned",
        "loss",
        "acc fine-tuned",
        "loss",
        "seconds",
        "ms b=64 (CPU)",
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if i else "-" * (w + 2) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _ms(row: Mapping) -> str:
    """The measured batch-64 CPU latency in milliseconds ("" where not measured)."""
    return f"{1e3 * row['latency_b64']:.2f}" if "latency_b64" in row else ""


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def summarize(results: Mapping, *, test_samples: int | None = None) -> list[str]:
    """Sentences that say what the table shows, computed from its numbers."""
    base, methods = results["base"], results["methods"]
    sentences = []
    if methods:
        any_row = next(iter(methods.values()))
        sentences.append(
            f"The base model has {_pct(base['acc'])} test accuracy; every pruned model keeps "
            f"{any_row['macs'] / base['macs']:.1%} of its MACs and "
            f"{any_row['params'] / base['params']:.1%} of its parameters."
        )
    if test_samples:
        sentences.append(
            f"One test sample is {100 / test_samples:.2f} points of accuracy; smaller "
            "differences are not differences."
        )
    pruned = {k: v for k, v in methods.items() if k != "scratch"}
    for stage, key in (
        ("Right after pruning", "acc_pruned"),
        ("After fine-tuning", "acc_finetuned"),
    ):
        pool = pruned if key == "acc_pruned" else methods
        if len(pool) < 2:
            continue
        ranked = sorted(pool, key=lambda m: -pool[m][key])
        order = ", ".join(f"{m} {_pct(pool[m][key])}" for m in ranked)
        sentence = f"{stage}, ranked by accuracy: {order}."
        if "gfs" in pool:
            best_other = max((m for m in pool if m != "gfs"), key=lambda m: pool[m][key])
            gap = 100 * (pool["gfs"][key] - pool[best_other][key])
            if gap == 0:
                sentence += f" Greedy forward selection ties with the best other ({best_other})."
            else:
                verdict = "leads" if gap > 0 else "trails"
                sentence += (
                    f" Greedy forward selection {verdict} the best other method ({best_other}) "
                    f"by {abs(gap):.2f} points."
                )
        sentences.append(sentence)
    if "gfs" in methods and "scratch" in methods:
        gap = 100 * (methods["gfs"]["acc_finetuned"] - methods["scratch"]["acc_finetuned"])
        sentences.append(
            f"Fine-tuning greedy selection's subnetwork gives {gap:+.2f} points against "
            "training the same architecture from scratch for pre-training plus fine-tuning "
            f"epochs ({_pct(methods['scratch']['acc_finetuned'])})."
        )
    if "gfs" in methods and "backward" in methods:
        fwd, bwd = methods["gfs"], methods["backward"]
        sentences.append(
            f"Forward against backward selection: {_pct(fwd['acc_pruned'])} vs "
            f"{_pct(bwd['acc_pruned'])} right after pruning, {_pct(fwd['acc_finetuned'])} vs "
            f"{_pct(bwd['acc_finetuned'])} after fine-tuning, in {fwd['seconds']:.2f} s vs "
            f"{bwd['seconds']:.2f} s of selection."
        )
    return sentences


def plot_accuracy(results: Mapping, path: str | os.PathLike) -> Path:
    """Each method's test accuracy right after pruning (left, full scale) and after
    fine-tuning (right, zoomed to the spread of the values), against the unpruned model."""
    names = list(results["methods"])
    base = 100 * results["base"]["acc"]
    fig, axes = _figure(width=max(8.0, 1.2 * len(names) + 3), panels=2)
    panels = (
        ("right after pruning", "acc_pruned", "tab:gray"),
        ("after fine-tuning", "acc_finetuned", "tab:red"),
    )
    for ax, (title, key, color) in zip(axes, panels, strict=True):
        values = [100 * results["methods"][n][key] for n in names]
        bars = ax.bar(np.arange(len(names)), values, 0.7, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        ax.axhline(base, color="black", linestyle="--", linewidth=1, label=f"unpruned {base:.1f}")
        ax.set_xticks(
            np.arange(len(names)),
            [_LABELS.get(n, n) for n in names],
            rotation=25,
            ha="right",
            fontsize=8,
        )
        low = 0.0 if key == "acc_pruned" else max(0.0, min(values + [base]) - 3)
        ax.set(title=title, ylim=(low, min(100.5, max(values + [base]) + 2)))
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle("Same pruned architecture, different channel choices", fontsize=11)
    return _save(fig, path)


def plot_widths(plan: Sequence[LayerPlan], path: str | os.PathLike) -> Path:
    """Bars of each channel layer's original width with the width kept inside."""
    fig, (ax,) = _figure(width=max(6.0, 0.35 * len(plan) + 2), panels=1)
    x = np.arange(len(plan))
    ax.bar(x, [p.width for p in plan], 0.8, color="0.85", label="original")
    kept = ax.bar(x, [len(p.kept) for p in plan], 0.5, color="tab:red", label="kept")
    if len(plan) <= 30:
        ax.bar_label(kept, fontsize=7, padding=1)
    ax.set_xticks(
        x, [p.name for p in plan], rotation=60, ha="right", fontsize=8 if len(plan) < 20 else 6
    )
    # The widths are the budget's split (the width allocator); selection chose which channels.
    ax.set(ylabel="channels", title="Channels kept per layer (the MACs budget's split)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _figure(*, width: float, panels: int):
    """A figure with ``panels`` side-by-side axes, gridded horizontally."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    return fig, list(axes)


def _save(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def write_report(
    comparison: Comparison, out: str | os.PathLike, *, context: Mapping | None = None
) -> list[Path]:
    """Write ``results.json``, ``report.md``, ``accuracy.png`` and ``widths.png`` into ``out``.

    Args:
        comparison: What :func:`gfsprune.compare.compare` returned.
        out: The folder, created if missing.
        context: JSON-serialisable settings shown in the report; ``test_samples`` there adds
            the resolution of the accuracies.

    Returns:
        The paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    context = dict(context or {})
    results = comparison.results
    written = write_json(out / RESULTS_FILE, results)
    accuracy = plot_accuracy(results, out / "accuracy.png")
    widths = plot_widths(comparison.plan, out / "widths.png")
    settings = ", ".join(f"{k}: {v}" for k, v in context.items())
    text = [
        "# Pruning comparison",
        "",
        f"Settings: {settings}." if settings else "",
        "",
        format_table(results),
        "",
        "Accuracy and loss are on the test split; `seconds` is the time to choose the channels "
        "(for `scratch`, to re-initialise).",
        "",
        " ".join(summarize(results, test_samples=context.get("test_samples"))),
        "",
        f"![accuracy]({accuracy.name}) ![widths]({widths.name})",
        "",
    ]
    return [written, write_text(out / "report.md", "\n".join(text)), accuracy, widths]
