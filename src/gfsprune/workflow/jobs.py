"""The command line's jobs as functions: train, prune, fine-tune, evaluate, compare, demo.

Folders these jobs read and write:

- a *trained checkpoint* (``train --out``): ``model.json`` (zoo name, constructor options,
  data spec, input shape, pre-training recipe and history), ``model.safetensors`` (weights)
  and ``train_state.pt`` (what :func:`gfsprune.train.fit` resumes from);
- a *pruned model* (``prune --out``, ``finetune --out``): the :func:`gfsprune.save` format,
  whose metadata holds the ``model.json`` fields so the base can be rebuilt from the zoo, plus
  ``progress.json`` (per-layer pruning progress) and ``run.json`` (the options of the run).

A job never silently replaces a run: an existing ``train_state.pt`` or ``progress.json``
is continued with ``resume=True`` and refused otherwise. Data sets are always loaded with
their default seed, so every job sees the same train/test split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gfsprune import distributed, models
from gfsprune.core.config import PruneConfig
from gfsprune.core.counting import count
from gfsprune.core.prune import prune
from gfsprune.errors import ConfigError, DataError, ModelError
from gfsprune.io.saved import PLAN_FILE, WEIGHTS_FILE, load, read_plan, save
from gfsprune.plan import LayerPlan, PruneResult
from gfsprune.targets import Target
from gfsprune.workflow import report
from gfsprune.workflow.compare import CompareConfig, Comparison, compare
from gfsprune.workflow.data import DataBundle, load_data, make_loader
from gfsprune.workflow.seeding import seeded
from gfsprune.workflow.train import CHECKPOINT_NAME, TrainConfig, evaluate, fit, resolve_device

__all__ = [
    "DEMO",
    "DemoConfig",
    "ModelInfo",
    "compare_checkpoint",
    "demo",
    "evaluate_dir",
    "finetune_dir",
    "load_model",
    "measure_latency",
    "prune_checkpoint",
    "train_model",
]

MODEL_FILE = "model.json"
PROGRESS_FILE = "progress.json"
RUN_FILE = "run.json"
_FORMAT = "gfsprune-model"


@dataclass(frozen=True)
class ModelInfo:
    """How to rebuild a zoo model, and what it was trained on.

    Attributes:
        name: The zoo name (``gfsprune.models.get``).
        options: Its constructor options (``num_classes``, ``in_channels``, ...).
        data: The data spec it was trained on.
        input_shape: ``(C, H, W)`` of one input.
        pretrain: The pre-training :class:`TrainConfig` fields (``{}`` if unknown).
    """

    name: str
    options: dict[str, Any]
    data: str
    input_shape: tuple[int, ...]
    pretrain: dict[str, Any]

    def build(self) -> nn.Module:
        """A freshly initialised instance of the architecture."""
        return models.get(self.name, **self.options)

    def example_inputs(self) -> torch.Tensor:
        """One zero input, ``(1, C, H, W)``, to trace and count with."""
        return torch.zeros(1, *self.input_shape)

    @classmethod
    def from_json(cls, fields: dict, where: Path) -> ModelInfo:
        """Read the fields written by ``dataclasses.asdict``; ModelError naming ``where``."""
        try:
            info = cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls)})
        except (KeyError, TypeError) as err:
            raise ModelError(
                f"'{where}' does not describe a gfsprune model (missing {err}); pass a folder "
                "written by `gfsprune train`, `prune` or `finetune`."
            ) from err
        return dataclasses.replace(info, input_shape=tuple(info.input_shape))


def _write_json(path: Path, value: object) -> None:
    """Write ``value`` as JSON atomically: a half-written file never replaces a good one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _check_out(source: str | os.PathLike, out: Path) -> None:
    if out.resolve() == Path(source).resolve():
        raise ConfigError(
            f"the output folder '{out}' is the input folder; writing there would replace the "
            "input model. Choose another --out."
        )


def _refuse_existing(path: Path, resume: bool) -> None:
    if path.exists() and not resume:
        raise ConfigError(
            f"'{path}' holds an earlier run; pass --resume to continue it, or choose another "
            "output folder (or delete it) to start over."
        )


def load_bundle(spec: str | None, info: ModelInfo) -> DataBundle:
    """The data set ``spec`` (default: the model's own), checked to fit the model."""
    bundle = load_data(spec or info.data)
    classes = info.options.get("num_classes")
    if tuple(bundle.input_shape) != tuple(info.input_shape) or bundle.num_classes != classes:
        raise DataError(
            f"data {bundle.name!r} has inputs {tuple(bundle.input_shape)} in "
            f"{bundle.num_classes} classes but the model takes {tuple(info.input_shape)} in "
            f"{classes}; pass data like the model's own ({info.data!r})."
        )
    return bundle


def _new_model(
    name: str, spec: str, *, config: TrainConfig, width_mult: float
) -> tuple[nn.Module, ModelInfo, DataBundle]:
    """A zoo model built for the data ``spec``, initialised from ``config.seed``."""
    bundle = load_data(spec)
    channels, side = bundle.input_shape[0], bundle.input_shape[1]
    options: dict[str, Any] = {
        "num_classes": bundle.num_classes,
        "in_channels": channels,
        "image_size": side,
    }
    if width_mult != 1.0:
        options["width_mult"] = width_mult
    info = ModelInfo(name, options, spec, tuple(bundle.input_shape), dataclasses.asdict(config))
    with seeded(config.seed):
        model = info.build()
    return model, info, bundle


def _save_model(model: nn.Module, info: ModelInfo, out: Path, history: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / f".{WEIGHTS_FILE}.tmp"
    save_file(weights, tmp)
    os.replace(tmp, out / WEIGHTS_FILE)
    _write_json(
        out / MODEL_FILE,
        {"format": _FORMAT, **dataclasses.asdict(info), "history": history},
    )


def train_model(
    name: str,
    out: str | os.PathLike,
    *,
    data: str,
    config: TrainConfig,
    width_mult: float = 1.0,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> list[dict[str, float]]:
    """Train the zoo model ``name`` on ``data`` and write a checkpoint folder ``out``.

    Returns:
        The per-epoch history of :func:`gfsprune.train.fit`.
    """
    out = Path(out)
    _refuse_existing(out / CHECKPOINT_NAME, resume)
    model, info, bundle = _new_model(name, data, config=config, width_mult=width_mult)
    history = fit(
        model, bundle, config, checkpoint_dir=out, resume=resume, progress=progress, device=device
    )
    if distributed.is_main():
        _save_model(model, info, out, history)
    return history


def load_model(directory: str | os.PathLike) -> tuple[nn.Module, ModelInfo]:
    """The model in a trained checkpoint or a pruned folder, on the CPU in eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(
            f"model folder '{directory}' does not exist; pass a folder written by "
            "`gfsprune train`, `prune` or `finetune`."
        )
    if (directory / PLAN_FILE).is_file():
        info = ModelInfo.from_json(read_plan(directory)["metadata"], directory / PLAN_FILE)
        return load(directory, info.build()), info
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ModelError(
            f"'{directory}' holds neither {MODEL_FILE} nor {PLAN_FILE}; pass a folder written "
            "by `gfsprune train`, `prune` or `finetune`."
        )
    try:
        fields = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"'{path}' is not valid JSON ({err}); the file is corrupt.") from err
    if not isinstance(fields, dict) or fields.get("format") != _FORMAT:
        raise ModelError(f"'{path}' is not a gfsprune model file (no format '{_FORMAT}').")
    info = ModelInfo.from_json(fields, path)
    model = info.build()
    try:
        model.load_state_dict(load_file(directory / WEIGHTS_FILE))
    except (FileNotFoundError, SafetensorError, OSError, RuntimeError) as err:
        raise ModelError(
            f"cannot load the weights in '{directory / WEIGHTS_FILE}' "
            f"({str(err).splitlines()[0]}); the checkpoint is incomplete or damaged."
        ) from err
    return model.eval(), info


def _weights_digest(directory: Path) -> str:
    return hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()


def prune_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    target: Target,
    config: PruneConfig | None = None,
    batch_size: int = 128,
    data: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[PruneResult, dict[str, float]]:
    """Prune the trained model in ``checkpoint`` on its training data and save it to ``out``.

    Progress is saved to ``out/progress.json`` after every layer; ``resume=True`` continues
    an interrupted run with the same options to the same plan.

    Returns:
        The result, and the test accuracy and loss before and right after pruning
        (``acc_before``, ``loss_before``, ``acc_after``, ``loss_after``).
    """
    config = config or PruneConfig()
    device = resolve_device(config.device)
    config = dataclasses.replace(config, device=device)
    model, info = load_model(checkpoint)
    bundle = load_bundle(data, info)
    out = Path(out)
    _check_out(checkpoint, out)
    settings = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "weights": _weights_digest(Path(checkpoint)),
        "data": bundle.name,
        "target": repr(target),
        "batch_size": batch_size,
        **config.settings(),
    }
    _refuse_existing(out / PROGRESS_FILE, resume)
    if resume and (out / RUN_FILE).is_file():
        before = json.loads((out / RUN_FILE).read_text())
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise ConfigError(
                f"cannot resume '{out}': the run was started with other {', '.join(changed)} "
                f"({', '.join(f'{k}={before.get(k)!r}' for k in changed)}); resume with the "
                "same options or choose another --out."
            )
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / RUN_FILE, settings)
    loader = make_loader(bundle.train, batch_size=batch_size, shuffle=True, seed=config.seed)
    with seeded(config.seed):  # the training augmentation draws from torch's generator
        result = prune(
            model,
            loader,
            info.example_inputs(),
            target=target,
            config=config,
            checkpoint=out / PROGRESS_FILE,
            progress=progress,
        )
    if distributed.is_main():
        save(result, out, metadata=dataclasses.asdict(info))
    (acc_before, loss_before), (acc_after, loss_after) = (
        evaluate(m, bundle.test, device=device) for m in (model, result.model)
    )
    scores = {"acc_before": acc_before, "loss_before": loss_before}
    return result, {**scores, "acc_after": acc_after, "loss_after": loss_after}


def finetune_dir(
    directory: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: TrainConfig,
    data: str | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> list[dict[str, float]]:
    """Fine-tune the pruned model in ``directory`` and save it, in the same format, to ``out``.

    ``out/train_state.pt`` is written every epoch; ``resume=True`` continues from it.
    """
    model, info = load_model(directory)
    plan = read_plan(directory)
    bundle = load_bundle(data, info)
    out = Path(out)
    _check_out(directory, out)
    _refuse_existing(out / CHECKPOINT_NAME, resume)
    history = fit(
        model, bundle, config, checkpoint_dir=out, resume=resume, progress=progress, device=device
    )
    if distributed.is_main():
        result = PruneResult(
            model=model.cpu(),
            plan=[LayerPlan(**layer) for layer in plan["layers"]],
            layers=[],
            macs_before=plan["macs_before"],
            macs_after=plan["macs_after"],
            params_before=plan["params_before"],
            params_after=plan["params_after"],
            example_inputs=info.example_inputs(),
            skipped=[],
        )
        metadata = {
            **plan["metadata"],
            "finetuned_from": str(Path(directory).resolve()),
            "finetune": {**dataclasses.asdict(config), "history": history},
        }
        save(result, out, metadata=metadata)
    return history


def measure_latency(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int, *, repeats: int = 5
) -> float:
    """Median seconds of a forward pass on the CPU at ``batch_size``, after two warm-up runs."""
    model = model.cpu().eval()
    inputs = torch.randn(batch_size, *input_shape)
    times = []
    with torch.inference_mode():
        for step in range(repeats + 2):
            start = time.perf_counter()
            model(inputs)
            if step >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def evaluate_dir(
    directory: str | os.PathLike, *, data: str | None = None, device: str | None = None
) -> dict[str, float]:
    """Accuracy, loss, MACs, params and CPU latency (batch 1 and 64) of a saved model."""
    model, info = load_model(directory)
    bundle = load_bundle(data, info)
    accuracy, loss = evaluate(model, bundle.test, device=resolve_device(device))
    model.cpu()
    macs, params = count(model, info.example_inputs())
    return {
        "acc": accuracy,
        "loss": loss,
        "macs": macs,
        "params": params,
        "latency_b1": measure_latency(model, info.input_shape, 1),
        "latency_b64": measure_latency(model, info.input_shape, 64),
    }


def compare_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: CompareConfig,
    data: str | None = None,
    progress: bool = True,
    device: str | None = None,
) -> Comparison:
    """:func:`gfsprune.compare.compare` on a trained checkpoint; writes the report to ``out``.

    ``scratch`` trains with the checkpoint's pre-training recipe, for its epochs plus the
    fine-tuning epochs, unless ``config.scratch`` is given.
    """
    model, info = load_model(checkpoint)
    bundle = load_bundle(data, info)
    if config.scratch is None and "scratch" in config.methods:
        if not info.pretrain:
            raise ConfigError(
                f"'{checkpoint}' does not record its pre-training recipe, which 'scratch' "
                "repeats; leave scratch out of --methods."
            )
        recipe = TrainConfig(**info.pretrain)
        epochs = recipe.epochs + config.finetune.epochs
        scratch = dataclasses.replace(recipe, epochs=epochs, seed=config.seed)
        config = dataclasses.replace(config, scratch=scratch)
    comparison = compare(model, bundle, config, progress=progress, device=resolve_device(device))
    context = {
        "checkpoint": str(checkpoint),
        "model": info.name,
        "model_options": info.options,
        "data": bundle.name,
        "test_samples": len(bundle.test),
        "config": dataclasses.asdict(config),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    report.write_report(comparison, out, context=context)
    return comparison


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings: a small CNN on scikit-learn digits, all methods at 50% MACs.

    The learning rates and batch sizes were chosen so the CNN trains in seconds on one core:
    with the recipe's default (batch 128, lr 0.1) ten epochs are only 110 steps and stop near
    65% test accuracy; batch 32 at lr 0.05 reaches about 99%.
    """

    model: str = "digits_cnn"
    data: str = "digits"
    pretrain: TrainConfig = TrainConfig(epochs=10, batch_size=32, lr=0.05)
    finetune: TrainConfig = TrainConfig(epochs=5, batch_size=32, lr=0.01)
    macs: float = 0.5


DEMO = DemoConfig()


def demo(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    config: DemoConfig | None = None,
    progress: bool = True,
) -> Comparison:
    """Train the demo model into ``out/model`` and compare every method on it into ``out``."""
    config = config or DEMO
    out = Path(out)
    pretrain = dataclasses.replace(config.pretrain, seed=seed)
    model, info, bundle = _new_model(config.model, config.data, config=pretrain, width_mult=1.0)
    history = fit(model, bundle, pretrain, progress=progress, device="cpu")
    _save_model(model, info, out / "model", history)
    settings = CompareConfig(
        macs=config.macs, finetune=dataclasses.replace(config.finetune, seed=seed), seed=seed
    )
    return compare_checkpoint(out / "model", out, config=settings, progress=progress, device="cpu")
