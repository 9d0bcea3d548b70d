"""The comparison report: the table, sentences derived from the numbers, files and figures."""

from __future__ import annotations

import json

import pytest

from gfsprune.plan import LayerPlan
from gfsprune.workflow.compare import Comparison
from gfsprune.workflow.report import format_table, summarize, write_report

PLAN = [LayerPlan("conv1", 16, list(range(11)), 16 / 11), LayerPlan("conv2", 32, [0, 5], 16.0)]


def _row(acc_pruned: float, acc_finetuned: float, seconds: float = 1.0, *, macs: int = 500) -> dict:
    """A row fine-tuned for 2 epochs (its accuracy after 1 epoch halfway)."""
    middle = (acc_pruned + acc_finetuned) / 2
    return {
        "macs": macs,
        "params": 60,
        "acc_pruned": acc_pruned,
        "loss_pruned": 1.0 - acc_pruned,
        "seconds": seconds,
        "epochs": {
            str(e): {"acc": acc, "loss": 1.0 - acc}
            for e, acc in ((0, acc_pruned), (1, middle), (2, acc_finetuned))
        },
    }


def _results(**methods: dict) -> dict:
    return {"base": {"acc": 0.95, "loss": 0.2, "macs": 1000, "params": 100}, "methods": methods}


def test_the_table_has_a_row_per_method_after_the_base() -> None:
    table = format_table(_results(gfs=_row(0.9, 0.94), random=_row(0.3, 0.93, 0.01))).splitlines()
    assert table[0].split("|")[1].strip() == "method" and set(table[1]) <= set("|-:")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["base", "gfs", "random"]
    assert "| 1,000 |" in table[2] and "95.00%" in table[2]
    cells = [cell.strip() for cell in table[4].split("|")[1:-1]]
    assert cells[3:] == ["30.00%", "61.50%", "93.00%", "0.01", ""]  # no latency given
    assert table[0].split("|")[4:7] == [" acc 0 ep ", " acc 1 ep ", " acc 2 ep "]
    with_latency = {**_row(0.3, 0.93), "latency_b64": 0.0125}
    assert format_table(_results(gfs=with_latency)).splitlines()[3].endswith(" 12.50 |")
    assert len({len(line) for line in table}) == 1  # aligned columns


def test_the_table_has_a_gpu_latency_column_where_one_was_measured() -> None:
    gpu = {**_row(0.9, 0.94), "latency_b64": 0.0125, "gpu_latency_b64": 0.0004}
    results = _results(gfs=gpu, random=_row(0.3, 0.93))
    results["base"] |= {"latency_b64": 0.025, "gpu_latency_b64": 0.0008}
    table = format_table(results).splitlines()
    assert table[0].split("|")[-3:-1] == [" ms b=64 (CPU) ", " ms b=64 (GPU) "]
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[-3:-1]]
        for line in table[2:]
    }
    assert cells == {"base": ["25.00", "0.80"], "gfs": ["12.50", "0.40"], "random": ["", ""]}
    assert "GPU" not in format_table(_results(gfs=_row(0.9, 0.94))).splitlines()[0]


def test_the_table_shows_recalibration_and_marks_macs_away_from_gfs() -> None:
    recalibrated = _row(0.5, 0.9)
    recalibrated["epochs"]["0"]["acc"] = 0.7
    results = _results(gfs=_row(0.9, 0.94), tp=_row(0.3, 0.9, macs=506), near=recalibrated)
    table = format_table(results).splitlines()
    assert table[0].split("|")[4].strip() == "acc pruned"
    cells = {line.split("|")[1].strip(): line.split("|") for line in table[2:]}
    assert cells["tp"][2].strip() == "506*" and cells["near"][2].strip() == "500"
    assert [c.strip() for c in cells["near"][4:6]] == ["50.00%", "70.00%"]
    text = " ".join(summarize(results))
    assert "choose their own widths at gfs's MACs: tp 50.6% of the base MACs." in text
    assert "tp (marked * in the table) could not be matched within 1%" in text
    close = " ".join(summarize(_results(gfs=_row(0.9, 0.94), tp=_row(0.3, 0.9, macs=504))))
    assert "tp 50.4% of the base MACs." in close and "marked *" not in close


def test_sentences_follow_the_numbers() -> None:
    leads = " ".join(summarize(_results(gfs=_row(0.9, 0.94), l1=_row(0.6, 0.95)), test_samples=400))
    assert "keep 50.0% of its MACs and 60.0% of its parameters (gfs's)." in leads
    assert "One test sample is 0.25 points" in leads
    assert "Right after pruning, ranked by accuracy: gfs 90.00%, l1 60.00%." in leads
    assert "Greedy forward selection leads the best other method (l1) by 30.00 points." in leads
    assert "After 1 epochs of fine-tuning, ranked by accuracy: gfs 92.00%, l1 77.50%." in leads
    assert "After 2 epochs of fine-tuning, ranked by accuracy: l1 95.00%, gfs 94.00%." in leads
    assert "trails the best other method (l1) by 1.00 points." in leads

    text = " ".join(
        summarize(
            _results(
                gfs=_row(0.9, 0.94, 2.0), backward=_row(0.92, 0.94, 8.0), scratch=_row(0.1, 0.96)
            )
        )
    )
    assert "scratch 10.00%" not in text  # untrained: not ranked right after pruning
    assert "for 2 epochs gives -2.00 points against training the same architecture" in text
    assert "90.00% vs 92.00% right after pruning, 94.00% vs 94.00% after 2 epochs" in text
    assert "in 2.00 s vs 8.00 s" in text


def test_write_report_writes_results_settings_markdown_and_figures(tmp_path) -> None:
    results = _results(gfs=_row(0.9, 0.94), bn=_row(0.7, 0.93), scratch=_row(0.1, 0.9))
    context = {"data": "digits", "test_samples": 450}
    paths = write_report(Comparison(results, PLAN), tmp_path / "out", context=context)
    assert [p.name for p in paths] == ["results.json", "report.md", "accuracy.png", "widths.png"]
    assert json.loads(paths[0].read_text()) == results
    report = paths[1].read_text()
    assert format_table(results) in report and "data: digits" in report
    assert summarize(results, test_samples=450)[0] in report
    for png in paths[2:]:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.mark.parametrize("methods", [{}, {"gfs": _row(0.5, 0.6)}])
def test_few_methods_give_no_ranking(methods: dict) -> None:
    assert not any("ranked" in s for s in summarize(_results(**methods)))
