"""The command line's jobs as functions: train, prune, fine-tune, evaluate, compare, demo.

Folders these jobs read and write:

- a *trained checkpoint* (``train --out``): ``model.json`` (zoo name, constructor options,
  data spec, input shape, pre-training recipe and history), ``model.safetensors`` (weights)
  and ``train_state.pt`` (what :func:`gfsprune.train.fit` resumes from);
- a *pruned model* (``prune --out``, ``finetune --out``): the :func:`gfsprune.save` format,
  whose metadata holds the ``model.json`` fields so the base can be rebuilt from the zoo, plus
  ``progress.json`` (per-layer pruning progress);
- a *comparison* (``compare --out``, ``demo --out``): ``results.json`` (rewritten as each
  method finishes), ``report.md`` and two figures.

Each also holds ``run.json``: which job wrote it, with which settings
(:mod:`gfsprune.io.folders`). A job writes only into a new or empty folder, or continues one
it wrote itself with ``resume=True`` and the same settings; anything else is refused before
any work starts. Data sets are always loaded with their default seed, so every job sees the
same train/test split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from gfsprune import distributed
from gfsprune.core.config import PruneConfig
from gfsprune.core.counting import count
from gfsprune.core.prune import prune
from gfsprune.errors import ConfigError, DataError, FileFormatError, ModelError
from gfsprune.io.atomic import write_json
from gfsprune.io.folders import Run, claim, write_run
from gfsprune.io.model_info import FORMAT as MODEL_FORMAT
from gfsprune.io.model_info import MODEL_FILE, ModelInfo, model_info, read_model_info
from gfsprune.io.results import RESULTS_FILE, read_results
from gfsprune.io.saved import PLAN_FILE, WEIGHTS_FILE, load, read_plan, save, write_weights
from gfsprune.io.schema import Fields
from gfsprune.plan import LayerPlan, PruneResult
from gfsprune.targets import Target
from gfsprune.workflow import report
from gfsprune.workflow.compare import CompareConfig, Comparison, compare
from gfsprune.workflow.data import DataBundle, load_data, make_loader
from gfsprune.workflow.latency import latencies
from gfsprune.workflow.seeding import seeded
from gfsprune.workflow.train import TrainConfig, evaluate, fit, resolve_device

__all__ = [
    "DEMO",
    "DemoConfig",
    "ModelInfo",
    "compare_checkpoint",
    "demo",
    "evaluate_dir",
    "finetune_dir",
    "load_model",
    "prune_checkpoint",
    "train_model",
]

PROGRESS_FILE = "progress.json"
# What a folder saved by gfsprune.save from Python needs in its metadata for the command line.
_SAVE_EXAMPLE = (
    'gfsprune.save(result, DIR, metadata={"name": "resnet20", "options": {"num_classes": 10}, '
    '"data": "cifar10:/data/cifar", "input_shape": [3, 32, 32]})'
)


def _check_out(source: str | os.PathLike, out: Path) -> None:
    if out.resolve() == Path(source).resolve():
        raise ConfigError(
            f"the output folder '{out}' is the input folder; writing there would replace the "
            "input model. Choose another output folder (--out)."
        )


def _refuse_torchrun(job: str) -> None:
    """``compare`` and ``demo`` run in one process: under torchrun each rank would run the
    whole job and write the same files."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise ConfigError(
            f"{job} runs in a single process, but this is one of {world} torchrun processes; "
            f"run `gfsprune {job}` without torchrun."
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
    write_weights(out / WEIGHTS_FILE, model)
    write_json(out / MODEL_FILE, {"format": MODEL_FORMAT, **info.to_json(), "history": history})


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
    device = resolve_device(device)
    model, info, bundle = _new_model(name, data, config=config, width_mult=width_mult)
    settings = {"model": name, "data": data, "width_mult": width_mult, **dataclasses.asdict(config)}
    out = claim(out, Run("train", settings), resume=resume)
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
        info = _saved_model_info(directory)
        return load(directory, _build(info, directory / PLAN_FILE)), info
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ModelError(
            f"'{directory}' holds neither {MODEL_FILE} nor {PLAN_FILE}; pass a folder written "
            "by `gfsprune train`, `prune` or `finetune`."
        )
    info = read_model_info(path)
    model = _build(info, path)
    try:
        model.load_state_dict(load_file(directory / WEIGHTS_FILE))
    except (FileNotFoundError, SafetensorError, OSError, RuntimeError) as err:
        raise ModelError(
            f"cannot load the weights in '{directory / WEIGHTS_FILE}' "
            f"({str(err).splitlines()[0]}); the checkpoint is incomplete or damaged."
        ) from err
    return model.eval(), info


def _saved_model_info(directory: Path) -> ModelInfo:
    """The zoo model a pruned folder's ``plan.json`` metadata names."""
    path = directory / PLAN_FILE
    metadata = read_plan(directory)["metadata"]
    if not {"name", "options", "data", "input_shape"} & set(metadata):
        raise ModelError(
            f"'{path}' does not say which zoo model it prunes (its metadata has no 'name', "
            "'options', 'data' or 'input_shape'), so the command line cannot rebuild it. Save "
            f"it with them, e.g. {_SAVE_EXAMPLE}, or load it in Python with "
            "gfsprune.load(DIR, base_model)."
        )
    fix = f"Save it again with the model's description, e.g. {_SAVE_EXAMPLE}."
    return model_info(Fields(metadata, path, "metadata", fix))


def _build(info: ModelInfo, path: Path) -> nn.Module:
    try:
        return info.build()
    except ConfigError as err:
        raise ModelError(f"'{path}' names a model the zoo cannot build: {err}") from err


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
        (``acc_before``, ``loss_before``, ``acc_after``, ``loss_after``) and the measured CPU
        latency before and after (``latency_b1_before``, ``latency_b64_after``, ...).
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
    claim(out, Run("prune", settings), resume=resume)
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
        save(result, out, metadata=info.to_json())
    (acc_before, loss_before), (acc_after, loss_after) = (
        evaluate(m, bundle.test, device=device) for m in (model, result.model)
    )
    scores = {"acc_before": acc_before, "loss_before": loss_before}
    scores |= {"acc_after": acc_after, "loss_after": loss_after}
    for when, net in (("before", model), ("after", result.model)):
        scores |= {f"{k}_{when}": v for k, v in latencies(net, info.input_shape).items()}
    return result, scores


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
    device = resolve_device(device)
    model, info = load_model(directory)
    plan = read_plan(directory)
    bundle = load_bundle(data, info)
    out = Path(out)
    _check_out(directory, out)
    settings = {
        "source": str(Path(directory).resolve()),
        "weights": _weights_digest(Path(directory)),
        "data": bundle.name,
        **dataclasses.asdict(config),
    }
    claim(out, Run("finetune", settings), resume=resume)
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


def evaluate_dir(
    directory: str | os.PathLike, *, data: str | None = None, device: str | None = None
) -> dict[str, float]:
    """Accuracy, loss, MACs, params and CPU latency (batch 1 and 64) of a saved model."""
    device = resolve_device(device)
    model, info = load_model(directory)
    bundle = load_bundle(data, info)
    accuracy, loss = evaluate(model, bundle.test, device=device)
    model.cpu()
    macs, params = count(model, info.example_inputs())
    return {
        "acc": accuracy,
        "loss": loss,
        "macs": macs,
        "params": params,
        **latencies(model, info.input_shape),
    }


def compare_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: CompareConfig,
    data: str | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> Comparison:
    """:func:`gfsprune.compare.compare` on a trained checkpoint; writes the report to ``out``.

    ``scratch`` trains with the checkpoint's pre-training recipe, for its epochs plus the
    fine-tuning epochs, unless ``config.scratch`` is given. ``out/results.json`` is rewritten
    as each method finishes; ``resume=True`` continues an interrupted comparison with the same
    options, reusing the methods it finished.
    """
    _refuse_torchrun("compare")
    device = resolve_device(device)
    model, info = load_model(checkpoint)
    bundle = load_bundle(data, info)
    config = _with_scratch(config, info, checkpoint)
    settings = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "weights": _weights_digest(Path(checkpoint)),
        "data": bundle.name,
        **_compare_settings(config),
    }
    run = Run("compare", settings)
    out = claim(out, run, resume=resume)
    return _compare(model, info, bundle, config, out=out, run=run, progress=progress, device=device)


def _with_scratch(config: CompareConfig, info: ModelInfo, checkpoint: Path | str) -> CompareConfig:
    """``config`` with ``scratch`` set from the checkpoint's pre-training recipe, if needed."""
    if config.scratch is not None or "scratch" not in config.methods:
        return config
    if not info.pretrain:
        raise ConfigError(
            f"'{checkpoint}' does not record its pre-training recipe, which 'scratch' "
            "repeats; leave scratch out of the methods (--methods)."
        )
    try:
        recipe = TrainConfig(**info.pretrain)
    except (TypeError, ConfigError) as err:
        raise FileFormatError(
            f"the pre-training recipe in '{checkpoint}' is damaged ({err}); leave scratch out "
            "of the methods (--methods) or train the model again."
        ) from err
    epochs = recipe.epochs + config.finetune.epochs
    scratch = dataclasses.replace(recipe, epochs=epochs, seed=config.seed)
    return dataclasses.replace(config, scratch=scratch)


def _compare_settings(config: CompareConfig) -> dict[str, Any]:
    """The options that decide a comparison's numbers, as JSON."""
    return {**dataclasses.asdict(config), "prune": config.prune.settings()}


def _compare(
    model: nn.Module,
    info: ModelInfo,
    bundle: DataBundle,
    config: CompareConfig,
    *,
    out: Path,
    run: Run,
    progress: bool,
    device: torch.device,
) -> Comparison:
    """Compare into the claimed folder ``out``, saving each row as it finishes and reusing
    the rows an earlier run of ``run`` saved there."""
    results_path = out / RESULTS_FILE
    done = read_results(results_path)["methods"] if results_path.exists() else {}
    rows = dict(done)

    def save_row(method: str, row: dict) -> None:
        rows[method] = row
        write_json(results_path, {"methods": rows})

    comparison = compare(
        model, bundle, config, progress=progress, device=device, done=done, on_result=save_row
    )
    context = {
        "model": info.name,
        "model_options": info.options,
        "data": bundle.name,
        "test_samples": len(bundle.test),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    layers = [{"name": p.name, "width": p.width, "kept": len(p.kept)} for p in comparison.plan]
    write_run(out, dataclasses.replace(run, context={**context, "layers": layers}))
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
    device: str | None = "cpu",
) -> Comparison:
    """Train the demo model into ``out/model`` and compare every method on it into ``out``.

    A demo folder of the same seed and settings is continued where it stopped (a finished
    one is reported again); any other existing folder is refused. ``device`` defaults to
    the CPU, where the tiny demo model runs fastest; ``None`` means CUDA when available.
    """
    _refuse_torchrun("demo")
    device = resolve_device(device)
    config = config or DEMO
    pretrain = dataclasses.replace(config.pretrain, seed=seed)
    model, info, bundle = _new_model(config.model, config.data, config=pretrain, width_mult=1.0)
    settings = CompareConfig(
        macs=config.macs, finetune=dataclasses.replace(config.finetune, seed=seed), seed=seed
    )
    settings = _with_scratch(settings, info, "the demo model")
    run = Run("demo", {"model": config.model, "data": config.data, **_compare_settings(settings)})
    out = claim(out, run, resume=True)
    history = fit(
        model,
        bundle,
        pretrain,
        checkpoint_dir=out / "model",
        resume=True,
        progress=progress,
        device=device,
    )
    _save_model(model, info, out / "model", history)
    return _compare(
        model.eval(), info, bundle, settings, out=out, run=run, progress=progress, device=device
    )
