"""The latency cost model: a model's forward time on its device at given widths, predicted
from timings of its pieces taken there.

Every convolution, linear layer and BatchNorm whose input or output width a channel layer
sets is timed on its own, in context: at its real input size (spatial or token dimensions),
at the batch size asked for, in the memory format asked for, with torch's current thread
count, on the model's device; once per call where a module runs more than once. A
convolution's time depends on both its widths (which kernel the backend picks, whether the
input is reordered to a blocked layout first), so each is timed on a small grid of (input,
output) widths (the narrowest, the full and a few between, multiples of 8 where the layer is
wide enough) and interpolated bilinearly; a depthwise convolution or a BatchNorm has one
width and a grid of one dimension. Identical pieces (same module, input size and widths) are
timed once.

What a sum of pieces misses (the modules that are not timed, activations and residual adds,
reorders between pieces, fusions) is the *rest*, modelled as ``c0 + c1 * v``, where ``v`` is
the share of the timed pieces' output elements kept (the activations the rest reads and
writes). Two whole-model timings calibrate it: the unpruned model, and a copy pruned to
half of every layer's channels (physically smaller, as the result will be). ``c1`` is
clipped to ``[0, rest at full width]``, so that the rest never grows as the model shrinks
nor turns negative (timing noise can make the smaller model look slower, or much faster).
Unless it was clipped, the prediction equals the measured latency of both calibration
models.

What neither part captures (e.g. a width between grid points that is slower than the
interpolation between them, a reorder that appears only in the whole network, a rest that
is not linear in ``v``) is corrected on the whole model: :meth:`LatencyCost.calibrate`
times a copy physically pruned to given widths (the width planner passes its plan: a closed
loop of measuring, correcting and re-planning) and adds the point (predicted share, measured
share) to a correction ``g``, a piecewise-linear map from the pieces' predicted share of the
unpruned latency to the measured share, through ``(1, 1)``, the half-width calibration model,
a third calibration model pruned to a quarter of every layer, and every model so timed (kept
non-decreasing: a new timing replaces the older points it contradicts, so that noise in one
does not stay), proportional below the narrowest point.
The prediction is ``full * g(pieces' prediction / full)``: it equals every whole-model timing
taken, and since ``g`` is monotone the allocator ranks the layers' steps as the pieces do.

Timings are cached on disk (JSON, never unpickled) per device, torch version, threads,
batch size and memory format; whole-model timings also per model structure and input shape
(and the widths of a calibrated copy, whose share of the unpruned seconds is kept).
A second model sharing pieces with the first reuses their timings.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gfsprune import distributed
from gfsprune._copying import copy_model
from gfsprune._inputs import map_tensors, model_device, run_hooked, tensors
from gfsprune.core.compute_cost import ComputeCost
from gfsprune.core.cost import CostModel
from gfsprune.core.timing import batched, median_seconds
from gfsprune.errors import ConfigError
from gfsprune.io.atomic import write_json
from gfsprune.surgery import ChannelLayer, prune_channels

__all__ = ["LatencyCost", "Timer", "cache_folder"]

#: ``timer(module, inputs)``: seconds of one forward pass (a median over repeats).
Timer = Callable[[nn.Module, object], float]

#: Version of the cache files' content; files of another version are ignored.
_SCHEMA = 2
#: Each timing repeats its forward pass (at least 5 times, at most 100) until the timed
#: passes add up to this many seconds.
_MIN_SECONDS = 0.05
#: Rounds of whole-model timings a share is the median of (:meth:`LatencyCost._timed_shares`).
_ROUNDS = 5
#: The share of every layer's channels the second calibration model keeps (the rest is
#: fitted to it), and the third's (a point of the whole-model correction only).
_CALIBRATION_SHARE = 0.5
_LOW_SHARE = 0.25
_TIMED = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
)


def cache_folder() -> Path:
    """Where latency timings are cached: ``$GFSPRUNE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/gfsprune``, else ``~/.cache/gfsprune``."""
    if os.environ.get("GFSPRUNE_CACHE_DIR"):
        return Path(os.environ["GFSPRUNE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gfsprune"


class LatencyCost(CostModel):
    """Predicts ``"latency"``, the seconds of a forward pass of a model pruned to given
    per-channel keep shares, and measures it (with the prediction, ``"latency_predicted"``)
    on a real model.

    Args:
        model: The unpruned network, on the device to time on.
        example_inputs: One example input of batch 1 (a tensor, tuple or dict).
        layers: Its channel layers, in selection order.
        batch: The batch size timed.
        channels_last: Time modules and inputs in channels-last memory format.
        points: Grid widths per dimension of a piece, at most (the narrowest and the full
            width among them).
        timer: Times one forward pass (default: the median of 5 to 100 passes, as many as
            fit in 0.05 s, after 2 warm-up passes).
        cache: A folder for the timing cache, ``True`` for :func:`cache_folder`, ``False``
            for none.
        structure: The model's :class:`ComputeCost` where the caller has one (the pieces'
            kept shares come from it).

    The cost model keeps a copy of ``model`` to time copies pruned to planned widths
    (:meth:`calibrate`).

    Attributes:
        layers: The channel layers, in selection order.
        full_seconds: The unpruned model's measured seconds.
        calibration: The three whole-model timings (``full``, ``half``, ``low``), the
            predictions of the last two by the pieces and rest, and the rest's fitted ``c0``
            and ``c1``.
        corrections: The whole-model correction's points, ``(predicted share, measured
            share)`` of the unpruned model's latency, by predicted share.
        measured: How many timings were taken (the others came from the cache).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: object,
        layers: Sequence[ChannelLayer],
        *,
        batch: int = 1,
        channels_last: bool = False,
        points: int = 5,
        timer: Timer | None = None,
        cache: str | os.PathLike | bool = True,
        structure: ComputeCost | None = None,
    ) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"The batch size to time must be a positive integer. Got {batch!r}.")
        if isinstance(points, bool) or not isinstance(points, int) or points < 2:
            raise ConfigError(f"'points' must be an integer of at least 2. Got {points!r}.")
        super().__init__(layers)
        self.structure = structure or ComputeCost(model, example_inputs, layers)
        self.terms = self.structure.terms
        self._batch, self._points = batch, points
        self._channels_last = channels_last
        self._timer = timer or functools.partial(median_seconds, min_seconds=_MIN_SECONDS)
        self._inputs = batched(example_inputs, batch)
        if channels_last:
            self._inputs = _in_format(self._inputs)
        self._table = _Table(model, batch, channels_last, cache)
        self._source, self._example = copy_model(model), example_inputs
        self.layers = list(layers)
        self._key = _structure_hash(model, example_inputs, layers)
        self.measured = 0
        self._build(model, example_inputs)
        self._calibrate(model, example_inputs, layers)
        self._agree()
        self.corrections: dict[float, float] = {1.0: 1.0}
        self._shares = np.ones(1), np.ones(1)  # the corrections' points, as two arrays
        for name in ("low", "half"):
            c = self.calibration
            self._correct(c[f"{name}_predicted"] / c["full"], c[name] / c["full"])
        self.full_seconds = self.full["latency"]
        self._table.save()

    # -- the pieces ------------------------------------------------------------------------

    def _build(self, model: nn.Module, example_inputs: object) -> None:
        """Time every piece on its grid and stack the grids for :meth:`predict_flat`."""
        modules = dict(model.named_modules())
        timed = {t.name: k for k, t in enumerate(self.terms) if isinstance(modules[t.name], _TIMED)}
        shapes = _input_shapes(model, example_inputs, [modules[n] for n in timed])
        rows = []  # (term, full_in, full_out, one_d, ins, outs, seconds, elements)
        for name, k in timed.items():
            module, term = modules[name], self.terms[k]
            full_in, full_out, one_d, step = _widths(module)
            outs = self._axis(full_out, step) if term.out is not None else np.array([full_out])
            ins = np.array([full_in]) if one_d or not term.inputs else self._axis(full_in, step)
            for shape, elements in shapes.get(module, []):
                seconds = np.array(
                    [[self._time(module, shape, int(i), int(o)) for o in outs] for i in ins]
                )
                rows.append((k, full_in, full_out, one_d, ins, outs, seconds, elements))
        width = self._points
        self._term = np.array([r[0] for r in rows], dtype=np.int64)
        self._names = [self.terms[r[0]].name for r in rows]
        self._full_in = np.array([r[1] for r in rows], dtype=float)
        self._full_out = np.array([r[2] for r in rows], dtype=float)
        self._one_d = np.array([r[3] for r in rows], dtype=bool)
        self._ins = np.array([_pad(r[4], width) for r in rows]).reshape(-1, width)
        self._outs = np.array([_pad(r[5], width) for r in rows]).reshape(-1, width)
        self._seconds = np.array([_pad(_pad(r[6], width).T, width).T for r in rows]).reshape(
            -1, width, width
        )
        self._elements = np.array([r[7] for r in rows], dtype=float)

    def _axis(self, full: int, step: int) -> np.ndarray:
        """Up to :attr:`points` widths of a dimension of ``full`` channels (multiples of
        ``step``): the narrowest, the full one, and evenly spread ones between, each moved to
        the nearest multiple of 8 where that is a multiple of ``step`` below ``full`` (the
        widths kernels are made for, and what ``round_to=8`` allows)."""
        inner = np.linspace(step, full, self._points)[1:-1]
        unit = math.lcm(8, step) if full > 2 * math.lcm(8, step) else step
        inner = np.clip(np.round(inner / unit) * unit, step, full)
        return np.unique(np.concatenate([[step], inner, [full]]).astype(int))

    def _time(
        self, module: nn.Module, shape: tuple[int, ...], width_in: int, width_out: int
    ) -> float:
        """Seconds of ``module`` resized to ``width_in`` inputs and ``width_out`` outputs, on
        an input of ``shape`` (batch 1, full width) at the batch size (cached)."""
        piece, dim, width = _resized(module, width_in, width_out)
        size = [self._batch, *shape[1:]]
        size[dim] = width
        parameter = next(itertools.chain(module.parameters(), module.buffers()))
        key = f"{piece!r} {tuple(size)} {parameter.dtype}"
        if key not in self._table.pieces:
            x = torch.randn(size, dtype=parameter.dtype, device=parameter.device)
            piece = piece.to(parameter.device, parameter.dtype).eval()
            if self._channels_last and x.dim() == 4:
                piece = piece.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            self._table.pieces[key] = float(self._timer(piece, x))
            self.measured += 1
        return self._table.pieces[key]

    # -- the rest --------------------------------------------------------------------------

    def _calibrate(
        self, model: nn.Module, example_inputs: object, layers: Sequence[ChannelLayer]
    ) -> None:
        """Fit the rest's ``c0 + c1 * v`` to the unpruned model and a copy pruned to half of
        every layer's channels (both timed whole); time a copy pruned to a quarter too, for
        the whole-model correction. The copies are timed as shares of the unpruned model's
        seconds (:meth:`_timed_shares`; load that drifted between single timings moved the
        half-width copy's share from 0.58 to 0.49 here)."""
        kept = {layer.name: _spread(layer, _CALIBRATION_SHARE) for layer in layers}
        low = {layer.name: _spread(layer, _LOW_SHARE) for layer in layers}
        half = _flat(layers, kept)
        full = np.ones_like(half)
        timings = self._table.models.get(self._key)
        if timings is None or len(timings) != 3:
            smaller = prune_channels(model, example_inputs, kept, layers=layers)
            smallest = prune_channels(model, example_inputs, low, layers=layers)
            shares, unpruned = self._timed_shares(model, [smaller, smallest])
            timings = [unpruned, *(share * unpruned for share in shares)]
            self._table.models[self._key] = timings
        (pieces_full, volume_full), (pieces_half, volume_half) = (
            self._pieces(full),
            self._pieces(half),
        )
        rest_full, rest_half = timings[0] - pieces_full, timings[1] - pieces_half
        c1 = 0.0
        if volume_full - volume_half > 0.05:  # 0 <= c1 <= rest_full: no negative rest
            c1 = (rest_full - rest_half) / (volume_full - volume_half)
            c1 = min(max(c1, 0.0), max(rest_full, 0.0) / volume_full)
        c0 = rest_full - c1 * volume_full
        self.calibration = {"full": timings[0], "half": timings[1], "c0": c0, "c1": c1}
        self.calibration["half_predicted"] = self._raw(pieces_half, volume_half)
        self.calibration["low"] = timings[2]
        self.calibration["low_predicted"] = self._raw(*self._pieces(_flat(layers, low)))

    def _agree(self) -> None:
        """Under ``torch.distributed``, take the main process's timings and fit on every
        process, so that all plan the same widths."""
        if not distributed.is_distributed():
            return
        names = sorted(self.calibration)
        values = _main_values([*self._seconds.ravel(), *(self.calibration[n] for n in names)])
        self._seconds = values[: self._seconds.size].reshape(self._seconds.shape)
        self.calibration = dict(zip(names, values[self._seconds.size :].tolist(), strict=True))

    def calibrate(self, widths: Sequence[int]) -> dict[str, float]:
        """Time a copy of the model pruned to ``widths`` (channels per layer, spread evenly
        over each layer as the half-width calibration model's are) as a share of the unpruned
        model's seconds (:meth:`_timed_shares`: it holds under load that drifts, and against a
        cache filled at another time), and add that share to the
        whole-model correction: from now on its prediction equals the timing. Returns
        ``{"latency": the measured share}``."""
        kept = {
            layer.name: _spread(layer, int(count) / layer.width)
            for layer, count in zip(self.layers, widths, strict=True)
        }
        key = f"{self._key} {[len(kept[layer.name]) for layer in self.layers]}"
        share = self._table.models.get(key)
        if share is None:
            model = prune_channels(self._source, self._example, kept, layers=self.layers)
            share = self._timed_shares(self._source, [model])[0]
        share = [float(_main_values(share)[0])]
        self._table.models[key] = share
        self._table.save()
        predicted = self._raw(*self._pieces(_flat(self.layers, kept)))
        self._correct(predicted / self.calibration["full"], share[0])
        return {"latency": share[0]}

    def _correct(self, predicted: float, measured: float) -> None:
        """Add the point ``(predicted, measured)`` (shares of the unpruned model's seconds)
        to the whole-model correction."""
        if not (math.isfinite(predicted) and math.isfinite(measured)) or not 0 < predicted < 1:
            return
        measured = min(measured, 1.0)
        # kept non-decreasing, the newest timing winning: older points it contradicts go
        self.corrections = {
            p: m
            for p, m in self.corrections.items()
            if p == 1.0 or (p < predicted and m <= measured) or (p > predicted and m >= measured)
        }
        self.corrections[predicted] = measured
        shares = np.array(sorted(self.corrections))
        self._shares = shares, np.array([self.corrections[p] for p in shares])
        self.revision += 1

    def measure(self, model: nn.Module, example_inputs: object) -> dict[str, float]:
        """Seconds of ``model`` (this model, or it physically pruned) measured whole at the
        batch size (``"latency_batch"``) on the example inputs the cost model was built with
        (``example_inputs`` has their shape), as the calibration times it (``"latency"``),
        and as predicted from its modules' widths, with the whole-model correction
        (``"latency_predicted"``)."""
        return {
            "latency": self._time_model(model),
            "latency_predicted": self.predict_model(model),
            "latency_batch": float(self._batch),
        }

    def _time_model(self, model: nn.Module) -> float:
        return float(self._timer(self._prepared(model), self._inputs))

    def _prepared(self, model: nn.Module) -> nn.Module:
        net = copy_model(model).eval()
        return net.to(memory_format=torch.channels_last) if self._channels_last else net

    def _timed_shares(
        self, unpruned: nn.Module, models: Sequence[nn.Module]
    ) -> tuple[list[float], float]:
        """Each of ``models``' seconds as a share of ``unpruned``'s, and ``unpruned``'s
        seconds: in each of :data:`_ROUNDS` rounds every model is timed between two timings
        of ``unpruned`` (their mean its reference); the medians over the rounds."""
        reference, nets = self._prepared(unpruned), [self._prepared(m) for m in models]
        around = [self._timer(reference, self._inputs)]
        ratios: list[list[float]] = [[] for _ in nets]
        for _ in range(_ROUNDS):
            for net, ratio in zip(nets, ratios, strict=True):
                seconds = self._timer(net, self._inputs)
                around.append(self._timer(reference, self._inputs))
                ratio.append(2 * seconds / (around[-2] + around[-1]))
        self.measured += len(around) + _ROUNDS * len(nets)
        return [float(np.median(r)) for r in ratios], float(np.median(around))

    # -- prediction ------------------------------------------------------------------------

    def _pieces(self, flat: np.ndarray) -> tuple[float, float]:
        """The timed pieces' summed seconds and kept share of their output elements, for
        keep vectors."""
        if not len(self._term):
            return 0.0, 1.0
        out, inp = self.structure.shares(flat)
        i = np.where(self._one_d, self._full_in, inp[self._term] * self._full_in)
        return self._sum(i, out[self._term] * self._full_out)

    def _sum(self, width_in: np.ndarray, width_out: np.ndarray) -> tuple[float, float]:
        """:meth:`_pieces` for each piece's input and output width."""
        rows = np.arange(len(self._term))
        a, ta = _locate(self._ins, width_in)
        b, tb = _locate(self._outs, width_out)
        s = self._seconds
        seconds = (
            (1 - ta) * (1 - tb) * s[rows, a, b]
            + ta * (1 - tb) * s[rows, a + 1, b]
            + (1 - ta) * tb * s[rows, a, b + 1]
            + ta * tb * s[rows, a + 1, b + 1]
        )
        kept = width_out / self._full_out * self._elements
        return float(seconds.sum()), float(kept.sum() / self._elements.sum())

    def predict_flat(self, flat: np.ndarray) -> dict[str, float]:
        return {"latency": self._total(*self._pieces(np.asarray(flat, dtype=float)))}

    def predict_model(self, model: nn.Module) -> float:
        """Predicted seconds of ``model``, this model physically pruned (its modules keep
        their names), from its modules' widths."""
        if not len(self._term):
            return self._total(0.0, 1.0)
        modules = dict(model.named_modules())
        widths = np.array([_widths(modules[name])[:2] for name in self._names], dtype=float)
        return self._total(
            *self._sum(np.where(self._one_d, self._full_in, widths[:, 0]), widths[:, 1])
        )

    def _raw(self, seconds: float, volume: float) -> float:
        """The pieces' seconds and the rest at the pieces' kept output share."""
        return seconds + self.calibration["c0"] + self.calibration["c1"] * volume

    def _total(self, seconds: float, volume: float) -> float:
        """:meth:`_raw`, corrected by the whole-model timings."""
        full = self.calibration["full"]
        share = self._raw(seconds, volume) / full
        predicted, measured = self._shares
        if share < predicted[0]:  # below the narrowest point: proportional
            return full * share * measured[0] / predicted[0]
        return full * float(np.interp(share, predicted, measured, right=share))

    def neighbours(self) -> list[set[int]]:
        """The layers sharing a piece (the rest, which every layer touches, is left out)."""
        return self.structure.neighbours()


def _main_values(values: Sequence[float]) -> np.ndarray:
    """``values`` as the main process has them (under ``torch.distributed``; else as
    given), so that every process plans with the same timings."""
    if not distributed.is_distributed():
        return np.asarray(values, dtype=float)
    tensor = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        tensor = tensor.cuda()
    return distributed.all_gather(tensor)[0].cpu().numpy()


def _locate(grid: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the grid interval holding ``x`` (its lower index) and ``x``'s position in
    it (0 to 1, clamped outside the grid)."""
    rows = np.arange(len(x))
    lower = np.clip((grid <= x[:, None]).sum(axis=1) - 1, 0, grid.shape[1] - 2)
    low, high = grid[rows, lower], grid[rows, lower + 1]
    gap = np.where(high > low, high - low, 1.0)
    return lower, np.where(high > low, np.clip((x - low) / gap, 0.0, 1.0), 0.0)


def _pad(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` extended along its first axis to ``size`` by repeating its last entry."""
    values = np.asarray(values, dtype=float)
    return np.concatenate([values, np.repeat(values[-1:], size - len(values), axis=0)])


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.in_channels > 1


def _widths(module: nn.Module) -> tuple[int, int, bool, int]:
    """``(input width, output width, one width only, step)`` of a timed module: a depthwise
    convolution or a norm has one width; a grouped convolution's widths are multiples of
    its groups."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features, module.num_features, True, 1
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False, 1
    if _is_depthwise(module):
        return module.in_channels, module.out_channels, True, module.out_channels // module.groups
    return module.in_channels, module.out_channels, False, module.groups


def _resized(module: nn.Module, width_in: int, width_out: int) -> tuple[nn.Module, int, int]:
    """A copy of ``module`` with ``width_in`` inputs and ``width_out`` outputs (for a module
    of one width, ``width_out`` sets both) and fresh weights, the input dimension holding its
    inputs' channels and their number. A copy, not a new instance, so that a subclass keeps
    what its constructor set up (e.g. EfficientNet's static "same" padding)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        piece = _reshaped(module, {"weight": (width_out,), "bias": (width_out,)})
        for name, fill in (("running_mean", 0.0), ("running_var", 1.0)):
            old = module._buffers.get(name)
            if old is not None:
                piece._buffers[name] = old.new_full((width_out,), fill)
        piece.num_features = width_out
        return piece, 1, width_out
    if isinstance(module, nn.Linear):
        piece = _reshaped(module, {"weight": (width_out, width_in), "bias": (width_out,)})
        piece.in_features, piece.out_features = width_in, width_out
        return piece, -1, width_in
    groups = module.groups
    if _is_depthwise(module):
        groups = width_out // (module.out_channels // module.groups)
        width_in = groups
    shapes = {
        "weight": (width_out, width_in // groups, *module.kernel_size),
        "bias": (width_out,),
    }
    piece = _reshaped(module, shapes)
    piece.in_channels, piece.out_channels, piece.groups = width_in, width_out, groups
    return piece, 1, width_in


def _reshaped(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """A copy of ``module`` whose parameters named in ``shapes`` (where it has them) are new,
    of those shapes (values like a default initialisation's: zeros or denormals would time
    other code paths); its submodules deep-copied, its own tensors not copied."""
    piece = copy.copy(module)
    piece._parameters, piece._buffers = dict(module._parameters), dict(module._buffers)
    piece._modules = {name: copy.deepcopy(child) for name, child in module._modules.items()}
    for name, shape in shapes.items():
        old = module._parameters.get(name)
        if old is not None:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            values = torch.randn(shape, dtype=old.dtype, device=old.device) / math.sqrt(fan_in)
            piece._parameters[name] = nn.Parameter(values, requires_grad=False)
    return piece


def _input_shapes(
    model: nn.Module, example_inputs: object, modules: Sequence[nn.Module]
) -> dict[nn.Module, list[tuple[tuple[int, ...], float]]]:
    """Per module, for each of its calls on ``example_inputs``: its first input's shape
    and the number of elements of its output."""
    wanted = set(modules)
    found: dict[nn.Module, list[tuple[tuple[int, ...], float]]] = {}

    def after(module, inputs, output):
        if module in wanted:
            found.setdefault(module, []).append((tuple(inputs[0].shape), float(output.numel())))

    run_hooked(model, example_inputs, after=after)
    return found


def _spread(layer: ChannelLayer, share: float) -> list[int]:
    """``share`` of ``layer``'s items (at least one), spread evenly over its channels so
    that every concatenated part keeps some."""
    count = max(1, round(share * layer.n_items))
    items = np.unique(np.round(np.linspace(0, layer.n_items - 1, count)).astype(int))
    kept = set(layer.channels(items.tolist()))
    for segment in layer.segments:
        if not kept & set(segment):
            kept |= set(layer.channels(layer.items_of([segment[0]])))
    return sorted(kept)


def _flat(layers: Sequence[ChannelLayer], kept: dict[str, list[int]]) -> np.ndarray:
    """The keep vectors of ``layers`` keeping the ``kept`` channels, concatenated."""
    return np.concatenate(
        [np.isin(np.arange(layer.width), kept[layer.name]).astype(float) for layer in layers]
    )


def _in_format(inputs: object) -> object:
    """``inputs`` with their 4-dimensional tensors in channels-last memory."""
    return map_tensors(
        inputs, lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
    )


def _structure_hash(
    model: nn.Module, example_inputs: object, layers: Sequence[ChannelLayer]
) -> str:
    """A digest of the model's modules, its input shapes and channel layers."""
    text = repr(model) + repr([tuple(t.shape) for t in tensors(example_inputs)])
    text += repr([(layer.name, layer.width) for layer in layers])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _device_name(device: torch.device) -> str:
    """The model of the processor or accelerator timings are taken on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return device.type


class _Table:
    """The timings of one setting (device, torch, threads, batch, memory format), read from
    and written back to the cache folder: ``pieces`` (a resized module and input shape to
    seconds) and ``models`` (a structure digest to the three calibration timings, and with
    a calibrated copy's widths to its measured share of the unpruned seconds)."""

    def __init__(
        self, model: nn.Module, batch: int, channels_last: bool, cache: str | os.PathLike | bool
    ) -> None:
        device = model_device(model)
        self.key = {
            "schema": _SCHEMA,
            "device": _device_name(device),
            "device_type": device.type,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "batch": batch,
            "memory_format": "channels_last" if channels_last else "contiguous",
        }
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        folder = cache_folder() if cache is True else (Path(cache) if cache else None)
        self.path = folder / f"latency-{digest}.json" if folder else None
        self.pieces: dict[str, float] = {}
        self.models: dict[str, list[float]] = {}
        self._merge()

    def _merge(self) -> None:
        """Add the cached timings of this setting (where the file's key matches) to those
        taken here."""
        if self.path is None or not self.path.is_file():
            return
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # an unreadable cache is measured anew and rewritten
        if not isinstance(stored, dict) or stored.get("key") != self.key:
            return
        for name in ("pieces", "models"):
            entries = stored.get(name)
            if isinstance(entries, dict):
                setattr(self, name, {**entries, **getattr(self, name)})

    def save(self) -> None:
        """Write the timings, merged with what another run has written since."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._merge()
        write_json(self.path, {"key": self.key, "pieces": self.pieces, "models": self.models})
