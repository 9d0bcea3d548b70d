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
from gfsprune.io.latency import MeasuredLatency
from gfsprune.io.results import RESULTS_FILE
from gfsprune.plan import LayerPlan
from gfsprune.workflow.compare import Comparison

__all__ = [
    "budgets",
    "format_table",
    "plot_accuracy",
    "plot_widths",
    "summarize",
    "write_report",
]

_LABELS = {
    "gfs": "greedy forward (gfs)",
    "l1": "L1 magnitude",
    "bn": "BN scale",
    "taylor": "Taylor",
    "random": "random",
    "backward": "greedy backward",
    "scratch": "from scratch",
    "tp-l1": "TP uniform L1",
    "tp-l2-global": "TP global L2",
    "tp-taylor-global": "TP global Taylor",
    "tp-lamp-global": "TP global LAMP",
}
# A method's MACs further than this (relative) from gfs's are marked in the table.
_MACS_TOLERANCE = 0.01


def budgets(results: Mapping) -> list[int]:
    """The fine-tuning budgets (epochs) any row was measured at, in increasing order.

    Example:
        >>> budgets({"methods": {"gfs": {"epochs": {"0": {}, "5": {}, "1": {}}}}})
        [0, 1, 5]
    """
    return sorted({int(e) for row in results["methods"].values() for e in row["epochs"]})


def headline(results: Mapping) -> tuple[str, str]:
    """The score the report ranks by and its name: test accuracy where the data has labels,
    else (distillation on unlabelled data) the top-1 agreement with the unpruned model.

    Example:
        >>> headline({"base": {"agree": 1.0, "kl": 0.0}})
        ('agree', 'agreement')
    """
    return ("acc", "accuracy") if "acc" in results["base"] else ("agree", "agreement")


def format_table(results: Mapping) -> str:
    """The results as a Markdown table: a row per method after the base model's, a column of
    test accuracy per fine-tuning budget, and before those the accuracy right after pruning
    where BatchNorm recalibration changed it. A ``*`` marks MACs more than 1% (relative) from
    gfs's (a pipeline whose channel steps could not match them; not at a latency budget,
    where the MACs differ by design). The batch-64 latency is
    the CPU's, and the GPU's too where the comparison measured one.

    Example:
        >>> row = {"macs": 5, "params": 2, "acc_pruned": 0.5, "loss_pruned": 1.0,
        ...        "seconds": 0.1, "epochs": {"0": {"acc": 0.5, "loss": 1.0},
        ...        "2": {"acc": 0.9, "loss": 0.3}}}
        >>> base = {"acc": 0.95, "loss": 0.2, "macs": 10, "params": 4}
        >>> table = format_table({"base": base, "methods": {"gfs": {**row, "latency_b64": 2e-3}}})
        >>> [cell.strip() for cell in table.splitlines()[3].split("|")[1:-1]]
        ['gfs', '5', '2', '50.00%', '90.00%', '0.10', '2.00']
    """
    base, methods = results["base"], results["methods"]
    epochs = budgets(results)
    key, _ = headline(results)
    recalibrated = any(r[f"{key}_pruned"] != r["epochs"]["0"][key] for r in methods.values())
    header = ["method", "MACs", "params", *([f"{key} pruned"] if recalibrated else [])]
    gpu = any(MeasuredLatency.from_json(row).gpu for row in [base, *methods.values()])
    header += [f"{key} {e} ep" for e in epochs] + ["seconds", "ms b=64 (CPU)"]
    header += ["ms b=64 (GPU)"] if gpu else []
    rows = [["base", f"{base['macs']:,}", f"{base['params']:,}"]]
    latency = _ms(base, gpu)
    rows[0] += [_pct(base[key])] + [""] * (len(header) - 4 - len(latency)) + latency
    # MACs off gfs's are marked where they were matched to it (not to a latency)
    reference = None if "budget" in results else methods.get("gfs", {}).get("macs")
    for name, r in methods.items():
        off = reference is not None and _off(r["macs"], reference)
        row = [name, f"{r['macs']:,}{'*' if off else ''}", f"{r['params']:,}"]
        row += [_pct(r[f"{key}_pruned"])] if recalibrated else []
        row += [_pct(r["epochs"][str(e)][key]) if str(e) in r["epochs"] else "" for e in epochs]
        rows.append([*row, f"{r['seconds']:.2f}", *_ms(r, gpu)])
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


def _off(macs: float, reference: float) -> bool:
    """Whether ``macs`` lies more than 1% (relative) from ``reference``."""
    return abs(macs - reference) > _MACS_TOLERANCE * reference


def _ms(row: Mapping, gpu: bool) -> list[str]:
    """The measured batch-64 latency in milliseconds on the CPU, and on the GPU where
    ``gpu`` ("" where not measured)."""
    latency = MeasuredLatency.from_json(row)
    found = [latency.cpu, latency.gpu] if gpu else [latency.cpu]
    return [f"{1e3 * seconds[64]:.2f}" if 64 in seconds else "" for seconds in found]


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _acc(row: Mapping, epochs: int, key: str = "acc") -> float | None:
    """The row's test accuracy (or ``key``) after ``epochs`` of fine-tuning, None where not
    measured."""
    score = row["epochs"].get(str(epochs))
    return None if score is None else score[key]


def summarize(results: Mapping, *, test_samples: int | None = None) -> list[str]:
    """Sentences that say what the table shows, computed from its numbers."""
    base, methods = results["base"], results["methods"]
    key, word = headline(results)
    sentences = []
    if key == "agree":
        sentences.append(
            "The data has no labels: every score is the top-1 agreement with the unpruned "
            "model on the held-out samples (the pruned models were selected and fine-tuned "
            "by distillation from it)."
        )
    if methods:
        reference = methods.get("gfs", next(iter(methods.values())))
        sentences.append(
            f"The base model has {_pct(base[key])} test {word}; the pruned models keep "
            f"{reference['macs'] / base['macs']:.1%} of its MACs and "
            f"{reference['params'] / base['params']:.1%} of its parameters"
            + (" (gfs's)." if "gfs" in methods else ".")
        )
        budget = results.get("budget")
        if budget:
            sentences.append(_budget_sentence(budget))
        off = [m for m, r in methods.items() if r["macs"] != reference["macs"]]
        if "gfs" in methods and off:
            sentences.append(
                "Torch-Pruning's pipelines choose their own widths at gfs's "
                + ("measured latency" if budget else "MACs")
                + ": "
                + ", ".join(f"{m} {methods[m]['macs'] / base['macs']:.1%}" for m in off)
                + " of the base MACs."
            )
            far = [m for m in off if _off(methods[m]["macs"], reference["macs"])]
            if far and not budget:
                sentences.append(
                    f"{', '.join(far)} (marked * in the table) could not be matched within 1%: "
                    "bisecting the pruning ratio came no closer to gfs's MACs."
                )
    if test_samples:
        sentences.append(
            f"One test sample is {100 / test_samples:.2f} points of {word}; smaller "
            "differences are not differences."
        )
    epochs = budgets(results) if methods else []
    for budget in epochs:
        pool = {m: a for m, r in methods.items() if (a := _acc(r, budget, key)) is not None}
        if budget == 0:
            pool.pop("scratch", None)  # untrained: not ranked
        if len(pool) < 2:
            continue
        stage = "Right after pruning" if budget == 0 else f"After {budget} epochs of fine-tuning"
        ranked = sorted(pool, key=lambda m: -pool[m])
        sentence = (
            f"{stage}, ranked by {word}: {', '.join(f'{m} {_pct(pool[m])}' for m in ranked)}."
        )
        if "gfs" in pool:
            best_other = max((m for m in pool if m != "gfs"), key=pool.__getitem__)
            gap = 100 * (pool["gfs"] - pool[best_other])
            if gap == 0:
                sentence += f" Greedy forward selection ties with the best other ({best_other})."
            else:
                verdict = "leads" if gap > 0 else "trails"
                sentence += (
                    f" Greedy forward selection {verdict} the best other method ({best_other}) "
                    f"by {abs(gap):.2f} points."
                )
        sentences.append(sentence)
    last = epochs[-1] if epochs else 0
    if last and "gfs" in methods and "scratch" in methods:
        tuned, scratch = _acc(methods["gfs"], last, key), _acc(methods["scratch"], last, key)
        sentences.append(
            f"Fine-tuning greedy selection's subnetwork for {last} epochs gives "
            f"{100 * (tuned - scratch):+.2f} points against training the same architecture "
            f"from scratch for pre-training plus fine-tuning epochs ({_pct(scratch)})."
        )
    if "gfs" in methods and "backward" in methods:
        fwd, bwd = methods["gfs"], methods["backward"]
        tuned = (
            f", {_pct(_acc(fwd, last, key))} vs {_pct(_acc(bwd, last, key))} after {last} epochs"
            if last
            else ""
        )
        sentences.append(
            f"Forward against backward selection: {_pct(_acc(fwd, 0, key))} vs "
            f"{_pct(_acc(bwd, 0, key))} right after pruning{tuned}, in {fwd['seconds']:.2f} s vs "
            f"{bwd['seconds']:.2f} s of selection."
        )
    return sentences


def _budget_sentence(budget: Mapping) -> str:
    """What a latency budget got: gfs's predicted and measured latency before and after,
    and the measured speed-up."""
    ms = {k: 1e3 * v for k, v in budget.items() if k.startswith("latency")}
    share = ms["latency_after"] / ms["latency_before"]
    return (
        f"gfs pruned to {budget['target']}: at batch {budget['batch']} its latency was "
        f"predicted {ms['latency_predicted_before']:.3f} -> {ms['latency_predicted_after']:.3f} "
        f"ms and measured {ms['latency_before']:.3f} -> {ms['latency_after']:.3f} ms "
        f"({share:.1%} of the unpruned model's, a {1 / share:.2f}x speed-up); the other "
        "methods keep its widths, and Torch-Pruning's pipelines have their pruning ratio "
        "bisected to its measured latency (within 2%)."
    )


def plot_accuracy(results: Mapping, path: str | os.PathLike) -> Path:
    """Each method's test accuracy (or agreement, :func:`headline`) against its fine-tuning
    epochs (0: right after pruning), one line per method, with the unpruned model's as a
    dashed line."""
    key, word = headline(results)
    base = 100 * results["base"][key]
    fig, (ax,) = _figure(width=8.0, panels=1)
    for name, row in results["methods"].items():
        points = sorted((int(e), 100 * score[key]) for e, score in row["epochs"].items())
        x, y = zip(*points, strict=True)
        style = {"linewidth": 2.5, "color": "tab:red"} if name == "gfs" else {"linewidth": 1.2}
        ax.plot(x, y, marker="o", label=_LABELS.get(name, name), **style)
    ax.axhline(base, color="black", linestyle="--", linewidth=1, label=f"unpruned {base:.1f}")
    epochs = budgets(results)
    ax.set_xticks(epochs)
    ax.set(
        xlabel="fine-tuning epochs",
        ylabel=f"test {word} (%)",
        title=f"{word.capitalize()} against fine-tuning, at the same MACs",
        ylim=(0.0, min(100.5, base + 2)),
    )
    ax.legend(fontsize=7, loc="lower right")
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
        comparison: What :func:`gfsprune.workflow.compare.compare` returned.
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
        "Accuracy is on the test split (losses are in results.json), after each number of "
        "epochs of fine-tuning; `seconds` is the time to choose the channels (for `scratch`, "
        "to re-initialise).",
        "",
        " ".join(summarize(results, test_samples=context.get("test_samples"))),
        "",
        f"![accuracy]({accuracy.name}) ![widths]({widths.name})",
        "",
    ]
    return [written, write_text(out / "report.md", "\n".join(text)), accuracy, widths]
