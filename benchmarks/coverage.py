"""Coverage (issue 10): which torchvision and timm classifiers gfsprune prunes, checked.

Every model is built with random weights (seed 0, 10 classes: a user's own data set, as in
the issue's ``--num-classes 10`` command), fed a small input (64x64 where the model runs on
it; else the constructor's size option at 64, ``img_size`` for timm or ``image_size`` for
torchvision's ViTs and MaxViT (``gfsprune.models.get`` passes it on); else the model's own
size: timm's ``pretrained_cfg`` ``input_size``, torchvision's weights' crop size; a model
refused at the small size only because the MACs target cannot be reached there is tried
again at its own), given three random batches of two labelled by the unpruned model's own
argmax, and pruned to ``Macs(0.5)``. Selection is the cheapest that runs the real code:
``--selection greedy`` (default) is forward selection with the ``Doubling`` schedule (each
step doubles the kept channels, scoring as many as it adds); ``--selection one-shot`` keeps
each layer's best channels by one first-order screen (``OneShot``: no loss scored,
everything else as in greedy). Which channels are kept does not matter for coverage; the
input batches are small because every candidate costs a pass.

Per model it records:

- status: ``ok``, ``refused`` (a ``gfsprune`` error: one line), ``crash`` (any other
  exception: its type, first line and innermost frame) or ``timeout`` (``--timeout``
  seconds, or out of ``--memory`` GiB); each model runs in its own forked process;
- the MACs ratio reached (``target``: within 2% relative of 0.5), output shape unchanged,
  masked == pruned (``prune`` refuses a pruned model that differs from the masked one, so it
  held wherever ``prune`` returned), ``save`` + ``load`` on a fresh base giving bit-identical
  outputs, ``export_onnx`` (checked against onnxruntime), and seconds.

A model *passes* when it is ``ok`` and every check holds. The timm list is fixed in
``TIMM_MODELS`` by the rule in ``pick_timm`` (``--pick-timm`` recomputes it, ~10 min).

    .venv/bin/python benchmarks/coverage.py --source torchvision --timeout 90 --json tv.json
    .venv/bin/python benchmarks/coverage.py --source timm --json timm.json --resume
    .venv/bin/python benchmarks/coverage.py --models torchvision:resnet18 timm:vit_tiny*
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import torch
from torch import nn

import gfsprune
from gfsprune.core.schedules import Schedule
from gfsprune.core.strategies import LayerChoice, LayerSearch, Strategy
from gfsprune.errors import ConfigError, first_line
from gfsprune.targets import Goal

RATIO = 0.5
TOLERANCE = 0.02  # relative: a ratio in [0.49, 0.51] meets the target
SIDE = 64
NUM_CLASSES = 10
BATCHES, BATCH = 3, 2
GOALS = {"torchvision": 0.95, "timm": 0.85}
# Torch-Pruning's published coverage (its README's benchmark of torchvision and timm models).
TORCH_PRUNING = {"torchvision": (77, 85), "timm": (119, 294)}

# pick_timm(): per timm model module (a family), of the models with at most 30M parameters
# (test_* toys excluded), the one with the fewest parameters, and the next-smallest (of a
# different size, so not the same network at another resolution) if it has at most 10M.
# timm 1.0.31: 121 models from 83 families.
TIMM_MODELS = (
    "halonet_h1", "mobileone_s1", "mobileone_s0", "cait_xxs24_224", "coat_tiny",
    "coat_lite_tiny", "convit_tiny", "convmixer_768_32", "convnext_zepto_rms",
    "convnext_atto_rms", "cpubone_nano", "cpubone_t0", "crossvit_tiny_240", "crossvit_9_240",
    "csatv2", "cs3darknet_focus_s", "cs3darknet_focus_m", "cspnext_tiny", "cspnext_s",
    "davit_tiny", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "densenet121",
    "dla46x_c", "dla46_c", "dpn48b", "edgenext_xx_small", "edgenext_x_small",
    "efficientformer_l1", "efficientformerv2_s0", "efficientformerv2_s1", "mobilenetv2_035",
    "mobilenetv2_050", "efficientvim_m1", "efficientvim_m1_dist", "efficientvit_b0",
    "efficientvit_b1", "efficientvit_m0", "efficientvit_m1", "vit_tiny_patch16_dinov3_qkvb",
    "vit_pe_spatial_tiny_patch16_512", "fasternet_t0", "fasternet_t1", "fastvit_t8",
    "fastvit_t12", "focalnet_tiny_srf", "gcvit_xxtiny", "ghostnet_050", "ghostnetv3_050",
    "hardcorenas_b", "hardcorenas_a", "hgnetv2_b0", "hgnetv2_b1", "hiera_tiny_224",
    "sam2_hiera_tiny", "hrnet_w18_small", "iformer_t", "iformer_s", "inception_next_atto",
    "inception_v3", "lcnetv2_small", "lcnetv2_base", "levit_128s", "levit_128",
    "lowformer_b0", "mambaout_femto", "mambaout_kobe", "maxvit_pico_rw_256",
    "poolformerv2_s12", "gmlp_ti16_224", "mobilenetv3_small_050", "lcnet_050",
    "mobilevit_xxs", "mobilevitv2_050", "mvitv2_tiny", "nest_tiny", "nf_regnet_b0",
    "pit_ti_224", "pit_ti_distilled_224", "pvt_v2_b0", "rdnet_tiny", "regnetx_002",
    "regnety_002", "repghostnet_050", "repghostnet_058", "repvit_m1", "repvit_m1_0",
    "res2next50", "resnest14d", "resnet10t", "resnetv2_18", "rexnet_100", "rexnetr_100",
    "legacy_seresnet18", "sequencer2d_s", "shvit_s1", "skresnet18", "starnet_s050",
    "starnet_s100", "swiftformer_xs", "swiftformer_s", "swin_tiny_patch4_window7_224",
    "swinv2_tiny_window16_256", "swinv2_cr_tiny_224", "tiny_vit_5m_224",
    "tnt_s_legacy_patch16_224", "twins_svt_small", "visformer_tiny", "vit_tiny_patch16_224",
    "vit_tiny_patch16_384", "vit_tiny_r_s16_p8_224", "vit_tiny_r_s16_p8_384",
    "vit_srelpos_small_patch16_224", "vitamin_small_224", "volo_d1_224",
    "ese_vovnet19b_slim_dw", "ese_vovnet19b_slim", "legacy_xception", "xception41p",
    "xcit_nano_12_p8_224", "xcit_nano_12_p16_224",
)  # fmt: skip


class Doubling(Schedule):
    """The cheapest forward selection: each step doubles the kept channels, scoring exactly
    as many candidates as it adds (chosen by the first-order screen). Which channels are kept
    does not matter for coverage, and every step of every layer still runs the evaluator, the
    masks and the screen; the ``fast`` schedule scores about twice as many, 16 at least."""

    name = "doubling"

    def picks(self, kept: int) -> int:
        return max(1, kept)

    def screened(self, kept: int) -> int | None:
        return self.picks(kept)


class OneShot(Strategy):
    """``--selection one-shot``: each layer keeps the goal's width of items with the best
    first-order screen, one backward pass per layer, no loss scored. Everything around the
    selection (tracing, masks, allocation, removal, the masked == pruned check, counting,
    save/load, ONNX) runs as in greedy selection, at a fraction of its cost."""

    name = "one-shot"
    needs_width = True

    def choose(self, search: LayerSearch, goal: Goal) -> LayerChoice:
        size = search.layer.n_items
        if goal.width is None or goal.width >= size:
            return LayerChoice(list(range(size)), [])
        return LayerChoice(search.objective.screen([], range(size), goal.width), [])


# Widths from ``uniform``: coverage is a question of tracing and surgery, and the default
# ``curves`` allocator would add a greedy pass over every layer before any of it.
SELECTIONS = {
    "greedy": lambda: gfsprune.PruneConfig(
        objective="loss", schedule=Doubling(), allocator="uniform", seed=0
    ),
    "one-shot": lambda: gfsprune.PruneConfig(
        objective="loss", strategy=OneShot(), allocator="uniform", seed=0
    ),
}


def pick_timm(*, largest: float = 30e6, second: float = 10e6) -> list[str]:
    """``TIMM_MODELS`` by its rule; parameters are counted on the meta device (no memory)."""
    import timm

    picked = []
    for module in timm.list_modules():
        sizes = []
        for name in timm.list_models(module=module):
            if name.startswith("test_"):
                continue
            with torch.device("meta"):
                params = sum(p.numel() for p in timm.create_model(name).parameters())
            if params <= largest:
                sizes.append((params, name))
        sizes.sort()
        if sizes:
            picked.append(sizes[0][1])
            other = [s for s in sizes if round(s[0], -5) != round(sizes[0][0], -5)]
            if other and other[0][0] <= second:
                picked.append(other[0][1])
    return picked


def model_specs(source: str) -> list[str]:
    """The benchmark's model specs for ``source`` (torchvision: every classifier)."""
    specs = []
    if source in ("torchvision", "all"):
        specs += gfsprune.models.available("torchvision")
    if source in ("timm", "all"):
        specs += [f"timm:{name}" for name in TIMM_MODELS]
    return specs


def _native_side(spec: str, model: nn.Module) -> int:
    """The input side the model was made for: timm's pretrained config, or the first of
    its torchvision weights' crop sizes that the model as built runs at (vit_h_14's first
    weights are 518, but its constructor's default is 224)."""
    source, _, name = spec.partition(":")
    if source == "timm":
        return int(model.pretrained_cfg["input_size"][-1])
    import torchvision

    weights = torchvision.models.get_model_weights(name)
    sides = list(dict.fromkeys(int(w.transforms().crop_size[0]) for w in weights))
    return next((s for s in sides if _runs(model, s)), sides[0])


def _construct(spec: str, options: dict) -> nn.Module:
    """``gfsprune.models.get(spec, **options)``, seeded, in eval mode."""
    torch.manual_seed(0)
    return gfsprune.models.get(spec, num_classes=NUM_CLASSES, **options).eval()


def _runs(model: nn.Module, side: int) -> bool:
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, side, side))
        return isinstance(out, torch.Tensor)
    except Exception:  # noqa: BLE001 - any failure means "not at this size"
        return False


def build(spec: str, side: int) -> tuple[nn.Module, dict, int]:
    """The model, the constructor options and the input side it runs at: ``side`` or 64
    as built, else the constructor's size option at that side, else the model's own."""
    model = _construct(spec, {})
    sides = list(dict.fromkeys((side, SIDE)))
    for s in sides:
        if _runs(model, s):
            return model, {}, s
    key = "img_size" if spec.startswith("timm:") else "image_size"
    for s in sides:
        options = {key: s}
        try:
            small = _construct(spec, options)
        except Exception:  # noqa: BLE001 - the model takes no such option or size
            continue
        if _runs(small, s):
            return small, options, s
    return model, {}, _native_side(spec, model)


def _where(err: BaseException) -> str:
    """The innermost frame of the traceback, and the innermost one in gfsprune."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    ours = [f for f in frames if "/gfsprune/" in f.filename]
    where = f"{Path(last.filename).name}:{last.lineno} {last.name}"
    if ours and ours[-1] is not last:
        where += f" (via {Path(ours[-1].filename).name}:{ours[-1].lineno} {ours[-1].name})"
    return where


def _prune(model: nn.Module, side: int, selection: str) -> tuple:
    """``model`` pruned at ``side``: the result, the input batches, the output shape."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        xs = [torch.randn(BATCH, 3, side, side, generator=g) for _ in range(BATCHES)]
        data = [(x, model(x).argmax(1)) for x in xs]
        expected_shape = tuple(model(xs[0][:2]).shape)
    config = SELECTIONS[selection]()
    result = gfsprune.prune(
        model, data, xs[0][:1], target=gfsprune.Macs(RATIO), config=config, progress=False
    )
    return result, xs, expected_shape


def check_model(
    spec: str, side: int = SIDE, *, selection: str = "greedy", onnx: bool = True
) -> dict:
    """Prune ``spec`` and run every check (the ONNX export only with ``onnx``); the row of
    the table."""
    start = time.perf_counter()
    row: dict = {"model": spec, "status": "crash"}
    stage = "build"
    try:
        model, options, side = build(spec, side)
        row["input"] = side
        stage = "prune"
        t0 = time.perf_counter()
        try:
            result, xs, expected_shape = _prune(model, side, selection)
        except ConfigError as err:
            # At 64x64 some models cost most where gfsprune cannot prune (Swin pads its 16x16
            # tokens to 21x21 windows): refused only for its input size, tried at its own.
            native = _native_side(spec, model)
            if "cannot be reached" not in str(err) or native == side:
                raise
            model, options, side = _construct(spec, {}), {}, native
            result, xs, expected_shape = _prune(model, side, selection)
        row["input"] = side
        row["prune_s"] = round(time.perf_counter() - t0, 1)
        row["status"] = "ok"
        row["equivalent"] = True  # prune refuses a pruned model unlike the masked one
        row["ratio"] = result.macs_after / result.macs_before
        row["target"] = abs(row["ratio"] / RATIO - 1) <= TOLERANCE
        row["skipped"] = len(result.skipped)
        pruned = result.model.eval()
        with torch.no_grad():
            row["shape"] = tuple(pruned(xs[0][:2]).shape) == expected_shape
        with tempfile.TemporaryDirectory() as tmp:
            stage = "save/load"
            row["roundtrip"] = False
            gfsprune.save(result, tmp)
            loaded = gfsprune.load(tmp, _construct(spec, options))
            with torch.no_grad():
                row["roundtrip"] = torch.equal(loaded(xs[1]), pruned(xs[1]))
            if onnx:
                stage = "onnx"
                row["onnx"] = False
                gfsprune.export_onnx(pruned, xs[0][:1], Path(tmp) / "model.onnx")
                row["onnx"] = True
    except Exception as err:  # noqa: BLE001 - the benchmark records every failure
        line = first_line(err)[:300]
        if stage in ("build", "prune"):
            refused = isinstance(err, gfsprune.GfsPruneError)
            row["status"] = "refused" if refused else "crash"
            if isinstance(err, MemoryError) or "can't allocate memory" in line:
                row["status"] = "timeout"  # out of --memory (torch's allocator or Python's)
            if refused and "does not compute what the masked" in line:
                row["equivalent"] = False
        row["error"] = f"{stage}: {type(err).__name__}: {line}"
        row["where"] = _where(err)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _child(spec: str, side: int, selection: str, memory_gib: float, conn) -> None:
    torch.set_num_threads(1)
    if memory_gib:
        # The cap is on address space above what the forked process already maps (torch's
        # libraries), so that a model too large for the machine fails alone.
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
        limit = vm + int(memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        conn.send(check_model(spec, side, selection=selection))
    except MemoryError:
        conn.send({"model": spec, "status": "timeout", "error": "out of memory"})


def run_isolated(
    spec: str, *, side: int, selection: str, timeout: float, memory_gib: float
) -> dict:
    """``check_model(spec)`` in a forked process, killed after ``timeout`` seconds."""
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    start = time.perf_counter()
    proc = ctx.Process(target=_child, args=(spec, side, selection, memory_gib, send), daemon=True)
    proc.start()
    send.close()
    row = None
    if receive.poll(timeout):
        try:
            row = receive.recv()
        except EOFError:
            row = None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    seconds = round(time.perf_counter() - start, 1)
    if row is None:
        killed = seconds >= timeout
        row = {
            "model": spec,
            "status": "timeout",
            "error": f"over {timeout:g} s" if killed else f"process died (exit {proc.exitcode})",
        }
    row["seconds"] = seconds
    return row


def passes(row: dict) -> bool:
    return row["status"] == "ok" and all(
        row.get(k) for k in ("target", "shape", "equivalent", "roundtrip", "onnx")
    )


def _mark(value: object) -> str:
    return "" if value is None else ("yes" if value else "**no**")


def table(rows: list[dict]) -> str:
    lines = [
        "| model | input | status | MACs ratio | target | shape | masked=pruned | save/load "
        "| ONNX | s | error |",
        "| --- | ---: | --- | ---: | --- | --- | --- | --- | --- | ---: | --- |",
    ]
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else ""
        error = r.get("error", "").replace("|", "\\|")
        lines.append(
            f"| {r['model']} | {r.get('input', '')} | {r['status']} | {ratio} "
            f"| {_mark(r.get('target'))} | {_mark(r.get('shape'))} "
            f"| {_mark(r.get('equivalent'))} | {_mark(r.get('roundtrip'))} "
            f"| {_mark(r.get('onnx'))} | {r['seconds']} | {error} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_source[r["model"].partition(":")[0]].append(r)
    lines = []
    for source, group in sorted(by_source.items()):
        counts = Counter(r["status"] for r in group)
        n_pass = sum(passes(r) for r in group)
        share = n_pass / len(group)
        status = ", ".join(f"{k} {counts[k]}" for k in ("ok", "refused", "crash", "timeout"))
        line = f"{source}: {len(group)} models ({status}); every check passing: {n_pass} "
        line += f"({share:.0%})"
        if source in GOALS:
            tp_ok, tp_all = TORCH_PRUNING[source]
            line += f", goal {GOALS[source]:.0%}; Torch-Pruning {tp_ok}/{tp_all} "
            line += f"({tp_ok / tp_all:.0%})"
        lines.append(line)
    return "\n".join(lines)


def _write(path: Path, rows: list[dict], meta: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("torchvision", "timm", "all"), default="all")
    parser.add_argument("--models", nargs="+", metavar="PATTERN", help="shell patterns of specs")
    parser.add_argument("--size", type=int, default=SIDE, help="input side to try first")
    parser.add_argument(
        "--selection", choices=sorted(SELECTIONS), default="greedy", help="see OneShot"
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds per model")
    parser.add_argument("--memory", type=float, default=6, help="GiB per model (0: no cap)")
    parser.add_argument("--json", metavar="FILE", help="write the rows after every model")
    parser.add_argument("--resume", action="store_true", help="keep the rows --json has")
    parser.add_argument(
        "--report", action="store_true", help="print the rows --json has; run nothing"
    )
    parser.add_argument("--pick-timm", action="store_true", help="print TIMM_MODELS by its rule")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.pick_timm:
        print(pick_timm())
        return
    specs = model_specs(args.source)
    if args.models:
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s, p) for p in args.models)]
        specs += [p for p in args.models if ":" in p and not any(c in p for c in "*?[")]
        specs = list(dict.fromkeys(specs))
    path = Path(args.json) if args.json else None
    rows: list[dict] = []  # every row of the file, those of other models too
    if path and args.resume and path.exists():
        rows = json.loads(path.read_text())["rows"]
    meta = {
        "command": "benchmarks/coverage.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 1 torch thread",
        "torch": torch.__version__,
        "gfsprune": gfsprune.__version__,
        "timeout_s": args.timeout,
        "size": args.size,
        "selection": args.selection,
    }
    if args.report:
        rows = json.loads(path.read_text())["rows"] if path else []
        specs = [s for s in specs if s in {r["model"] for r in rows}]
    done = {r["model"] for r in rows}
    for i, spec in enumerate(specs):
        if spec in done:
            continue
        row = run_isolated(
            spec,
            side=args.size,
            selection=args.selection,
            timeout=args.timeout,
            memory_gib=args.memory,
        )
        rows.append(row)
        ratio = f" ratio {row['ratio']:.3f}" if "ratio" in row else ""
        note = " pass" if passes(row) else f" {row.get('error', '')}"
        print(
            f"[{i + 1}/{len(specs)}] {spec}: {row['status']}{ratio} {row['seconds']}s{note}",
            flush=True,
        )
        if path:
            _write(path, rows, meta)
    order = {s: i for i, s in enumerate(specs)}
    shown = sorted((r for r in rows if r["model"] in order), key=lambda r: order[r["model"]])
    print(table(shown))
    print()
    print(summary(shown))


if __name__ == "__main__":
    main()
