"""The command line's jobs as functions: train, prune, fine-tune, evaluate, compare, demo.

A job's model comes from a folder these jobs wrote, or from a
:class:`~gfsprune.io.model_info.ModelInfo` the user gives (the command line's ``--model``:
any source of :func:`gfsprune.models.get`, with the user's ``weights``); see
:mod:`gfsprune.workflow.loading`. A *checkpoint* is always the file an interrupted job
resumes from. Folders these jobs read and write:

- a *trained model* (``train --out``, or ``finetune --out`` of a model that was not pruned):
  ``model.json`` (model spec, constructor options, data spec, input shape, normalisation,
  weights digest, pre-training recipe and history), ``model.safetensors`` (weights) and the
  checkpoint ``train_state.pt`` (what :func:`gfsprune.workflow.train.fit` resumes from);
- a *pruned model* (``prune --out``, ``finetune --out`` of a pruned folder): the
  :func:`gfsprune.save` format, whose metadata holds the ``model.json`` fields so the base can
  be rebuilt from its spec, plus the checkpoint ``progress.json`` (per-layer pruning
  progress; ``train_state.pt`` after fine-tuning);
- a *comparison* (``compare --out``, ``demo --out``): ``results.json`` (rewritten as each
  method finishes), ``report.md`` and two figures.

Each also holds ``run.json``: which job wrote it, with which settings
(:mod:`gfsprune.io.folders`). A job writes only into a new or empty folder, or continues one
it wrote itself with ``resume=True`` and the same settings; anything else is refused before
any work starts. Data sets are always loaded with their default seed, so every job sees the
same train/test split.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from gfsprune import distributed
from gfsprune.core.config import PruneConfig
from gfsprune.core.counting import count
from gfsprune.core.prune import prune
from gfsprune.errors import ConfigError, FileFormatError, ModelError
from gfsprune.io.atomic import write_json
from gfsprune.io.folders import Run, claim, write_run
from gfsprune.io.latency import MeasuredLatency
from gfsprune.io.model_info import FORMAT as MODEL_FORMAT
from gfsprune.io.model_info import MODEL_FILE, ModelInfo
from gfsprune.io.results import RESULTS_FILE, read_results
from gfsprune.io.saved import (
    PLAN_FILE,
    WEIGHTS_FILE,
    read_plan,
    save,
    save_with_plan,
    write_weights,
)
from gfsprune.plan import PruneResult
from gfsprune.targets import Target
from gfsprune.workflow import report
from gfsprune.workflow.compare import CompareConfig, Comparison, compare
from gfsprune.workflow.data import DataBundle, is_tokens, load_data, make_loader, require_labels
from gfsprune.workflow.distillation import Distillation, agreement, load_teacher, teacher_record
from gfsprune.workflow.latency import latencies
from gfsprune.workflow.loading import file_digest, load_bundle, load_model, open_spec
from gfsprune.workflow.seeding import seeded
from gfsprune.workflow.text import TextData, evaluate_text, text_objective
from gfsprune.workflow.train import TRAIN_STATE_FILE, TrainConfig, evaluate, fit, resolve_device

__all__ = [
    "DEMO",
    "DemoConfig",
    "Evaluation",
    "ModelInfo",
    "compare_model",
    "demo",
    "evaluate_dir",
    "finetune_dir",
    "load_model",
    "prune_model",
    "train_model",
]


PROGRESS_FILE = "progress.json"
#: Where a job's model comes from: a folder gfsprune wrote, or the user's description.
Source = str | os.PathLike | ModelInfo


@dataclass(frozen=True)
class Evaluation:
    """A model's test scores and its measured latency.

    Attributes:
        scores: ``acc`` and ``loss`` (images, labelled text), ``distill`` (text: the distance
            to the unpruned model's outputs); from :func:`evaluate_dir` also ``macs`` and
            ``params``; after pruning to a latency budget, and from :func:`evaluate_dir` of
            such a model, the budget's timings (``budget_latency_after``, ...:
            :func:`_budget_latency`).
        latency: On the CPU, and on the job's device where it is a GPU.
    """

    scores: dict[str, float]
    latency: MeasuredLatency


def _open(
    source: Source,
    *,
    data: str | None,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    model_spec: str | None = None,
) -> tuple[nn.Module, ModelInfo, DataBundle]:
    """The model ``source`` names, its description and its data (``data``, else its own);
    ``weights`` start a described model (a folder holds its own)."""
    if isinstance(source, ModelInfo):
        return open_spec(source, data=data, weights=weights, seed=seed)
    if weights is not None:
        raise ConfigError(
            "weights= goes with a model described by a ModelInfo; a folder holds its own "
            "weights, so leave weights= out"
        )
    model, info = load_model(source, model=model_spec)
    return model, info, load_bundle(data, info)


def _source_settings(source: Source, info: ModelInfo) -> dict[str, Any]:
    """What identifies a job's model in its ``run.json``: the folder and its weights, or the
    spec with its options, weights and input handling."""
    if isinstance(source, ModelInfo):
        fields = ("name", "options", "weights", "input_shape", "mean", "std")
        return {f"model_{key}": value for key, value in info.to_json().items() if key in fields}
    return {
        "source": str(Path(source).resolve()),
        "weights": file_digest(Path(source) / WEIGHTS_FILE),
    }


def _check_out(source: Source, out: Path) -> None:
    if isinstance(source, ModelInfo):
        return
    if out.resolve() == Path(source).resolve():
        raise ConfigError(
            f"the output folder '{out}' is the input folder; writing there would replace the "
            "input model. Choose another output folder (out=)."
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


def _fit(
    model: nn.Module,
    bundle: DataBundle,
    config: TrainConfig,
    out: Path,
    *,
    resume: bool,
    progress: bool,
    device: torch.device,
    distill: Distillation | None = None,
    teacher: nn.Module | None = None,
) -> list[dict[str, float]]:
    """:func:`fit` with its checkpoint in the job's folder ``out``."""
    return fit(
        model,
        bundle,
        config,
        checkpoint=out / TRAIN_STATE_FILE,
        resume=resume,
        progress=progress,
        device=device,
        distill=distill,
        teacher=teacher,
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
    """Train the zoo model ``name`` on ``data`` and write a trained model folder ``out``
    (its checkpoint ``train_state.pt`` after every epoch: ``resume=True`` continues from it).

    Returns:
        The per-epoch history of :func:`gfsprune.workflow.train.fit`.
    """
    device = resolve_device(device)
    model, info, bundle = _new_model(name, data, config=config, width_mult=width_mult)
    settings = {"model": name, "data": data, "width_mult": width_mult, **dataclasses.asdict(config)}
    out = claim(out, Run("train", settings), resume=resume)
    history = _fit(model, bundle, config, out, resume=resume, progress=progress, device=device)
    if distributed.is_main():
        _save_model(model, info, out, history)
    return history


def prune_model(
    source: Source,
    out: str | os.PathLike,
    *,
    target: Target,
    config: PruneConfig | None = None,
    batch_size: int = 128,
    data: str | None = None,
    weights: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    distill: Distillation | None = None,
) -> tuple[PruneResult, Evaluation, Evaluation]:
    """Prune the model in ``source`` (a folder or a :class:`ModelInfo` with its ``weights``)
    on its training data (``data`` where given) and save it to ``out``.

    Progress is saved to the checkpoint ``out/progress.json`` after every layer;
    ``resume=True`` continues an interrupted run with the same options to the same plan.
    With ``distill`` the loss is the distance to the unpruned model's outputs (labels mixed
    in where the data has them; :mod:`gfsprune.workflow.distillation`) and the scores are
    the agreement with it (``agree``, ``kl`` or ``mse``); the folder records the settings and
    the unpruned model's weights file, which ``finetune`` and ``eval`` use.

    Returns:
        The result, and the model's test scores and latency before and right after pruning.
    """
    config = config or PruneConfig()
    device = resolve_device(config.device)
    config = dataclasses.replace(config, device=device)
    model, info, bundle = _open(source, data=data, weights=weights, seed=config.seed)
    out = Path(out)
    _check_out(source, out)
    settings = {
        **_source_settings(source, info),
        "data": bundle.name,
        "target": repr(target),
        "batch_size": batch_size,
        **config.settings(),
    }
    if distill is not None:
        settings["distill"] = distill.to_json()
    claim(out, Run("prune", settings), resume=resume)
    # shuffled from the generator prune's streams seed (config.seed): an exact resume
    loader = make_loader(bundle.train, batch_size=batch_size, shuffle=True, seed=None)
    data, loss_fn = _objective(model.to(device), loader, bundle, distill)
    with seeded(config.seed):  # the training augmentation draws from torch's generator
        result = prune(
            model,
            data,
            info.example_inputs(),
            target=target,
            config=config,
            loss_fn=loss_fn,
            checkpoint=out / PROGRESS_FILE,
            progress=progress,
        )
    if distributed.is_main():
        metadata = {**info.to_json(), "teacher": teacher_record(weights, seed=config.seed)}
        if not isinstance(source, ModelInfo):
            metadata["teacher"] = teacher_record(Path(source) / WEIGHTS_FILE, seed=config.seed)
        if distill is not None:
            metadata["distill"] = distill.to_json()
        save(result, out, metadata=metadata)
    before, after = (
        Evaluation(
            _scores(net, bundle, teacher=model, device=device, distill=distill is not None),
            latencies(net, _sample(info), device),
        )
        for net in (model, result.model)
    )
    after.scores.update(_budget_latency(result.metrics_before, result.metrics_after))
    return result, before, after


def _budget_latency(before: Mapping, after: Mapping) -> dict[str, float]:
    """A latency budget's own timings (its cost model's, at the budget's batch size),
    measured and predicted, before and after pruning: ``budget_latency_before``,
    ``budget_latency_predicted_after``, ... and ``budget_latency_batch`` ({} for other
    budgets)."""
    if "latency" not in after:
        return {}
    return {
        "budget_latency_batch": after["latency_batch"],
        **{
            f"budget_{key}_{when}": metrics[key]
            for when, metrics in (("before", before), ("after", after))
            for key in ("latency", "latency_predicted")
        },
    }


def _objective(
    model: nn.Module, loader: DataLoader, bundle: DataBundle, distill: Distillation | None
) -> tuple[Iterable, Callable | None]:
    """What :func:`prune` selects by: ``(batches, loss_fn)``, ``loss_fn`` None for the
    cross-entropy on the labels."""
    if isinstance(bundle, TextData):
        if distill is not None:
            raise ConfigError(
                "--distill (distill=) is for image data; text is distilled from the unpruned "
                "model already unless a classifier has labels. Leave it out"
            )
        return text_objective(model, loader, bundle)
    if distill is not None:
        return distill.batches(model, loader, bundle)
    require_labels(bundle)
    return loader, None


def _scores(
    model: nn.Module,
    bundle: DataBundle,
    *,
    teacher: nn.Module,
    device: torch.device,
    distill: bool = False,
) -> dict[str, float]:
    """Test scores: accuracy and loss on labelled images, with ``distill`` the agreement
    with ``teacher``; for text the distillation loss to ``teacher`` (with accuracy and loss
    where they apply; :func:`evaluate_text`)."""
    if isinstance(bundle, TextData):
        return evaluate_text(model.to(device), bundle, teacher=teacher.to(device))
    if not distill:
        require_labels(bundle)
    scores = {}
    if bundle.labelled:
        scores["acc"], scores["loss"] = evaluate(model, bundle.test, device=device)
    if distill:
        scores |= agreement(model.to(device), teacher, bundle.test, labelled=bundle.labelled)
    return scores


def _sample(info: ModelInfo) -> tuple[int, ...] | object:
    """What latency is measured on: random images of the input shape, or the example token
    ids of text."""
    return info.example_inputs() if is_tokens(info.data) else info.input_shape


def _refuse_text(job: str, bundle: DataBundle) -> None:
    """Training on text is not there yet: ``fit`` and the comparison methods take images."""
    if isinstance(bundle, TextData):
        raise ConfigError(
            f"{job} trains on image classification data; text data ({bundle.name!r}) is for "
            "prune and eval only. Pass image data (data=)"
        )


def finetune_dir(
    directory: Source,
    out: str | os.PathLike,
    *,
    config: TrainConfig,
    data: str | None = None,
    weights: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
    model_spec: str | None = None,
    distill: Distillation | None = None,
) -> list[dict[str, float]]:
    """Fine-tune the model in ``directory`` and save it, in the same format, to ``out``;
    with ``distill`` it learns the outputs of the unpruned model (the one a pruned folder
    records, or the starting model itself).

    A pruned folder gives a pruned folder; a trained model folder or a :class:`ModelInfo`
    (with its ``weights``) gives a trained model folder. The checkpoint
    ``out/train_state.pt`` is written every epoch; ``resume=True`` continues from it.
    ``model_spec`` builds a folder's base from that spec instead of the recorded one (needed
    where the recorded spec runs the user's code).
    """
    device = resolve_device(device)
    model, info, bundle = _open(
        directory, data=data, weights=weights, seed=config.seed, model_spec=model_spec
    )
    _refuse_text("finetune", bundle)
    out = Path(out)
    _check_out(directory, out)
    settings = {
        **_source_settings(directory, info),
        "data": bundle.name,
        **dataclasses.asdict(config),
    }
    pruned = not isinstance(directory, ModelInfo) and (Path(directory) / PLAN_FILE).is_file()
    teacher = None
    if distill is not None:
        settings["distill"] = distill.to_json()
        teacher = _recorded_teacher(directory, info, model_spec) if pruned else copy.deepcopy(model)
    claim(out, Run("finetune", settings), resume=resume)
    history = _fit(
        model,
        bundle,
        config,
        out,
        resume=resume,
        progress=progress,
        device=device,
        distill=distill,
        teacher=teacher,
    )
    if distributed.is_main() and not pruned:
        _save_model(model, info, out, history)
    elif distributed.is_main():
        plan = read_plan(directory)
        plan["metadata"] = {
            **plan["metadata"],
            "finetuned_from": str(Path(directory).resolve()),
            "finetune": {
                **dataclasses.asdict(config),
                "distill": None if distill is None else distill.to_json(),
                "history": history,
            },
        }
        save_with_plan(model, plan, out)
    return history


def evaluate_dir(
    directory: Source,
    *,
    data: str | None = None,
    weights: str | os.PathLike | None = None,
    device: str | None = None,
    model_spec: str | None = None,
) -> Evaluation:
    """Accuracy, loss, MACs, params and latency (on the CPU, and on ``device`` where it is a
    GPU) of a saved model or a :class:`ModelInfo` with its ``weights`` (``model_spec``: as in
    :func:`finetune_dir`); for a model pruned to a latency budget also the latencies its
    pruning recorded (:func:`_budget_latency`); for a folder pruned by distillation the
    agreement with the unpruned model it records (``agree`` and ``kl``, or ``mse``; accuracy
    and loss only on labelled data)."""
    device = resolve_device(device)
    model, info, bundle = _open(directory, data=data, weights=weights, model_spec=model_spec)
    _check_finite(model)
    # Text, and images of a folder pruned by distillation, are scored against the unpruned
    # model: the base the folder was pruned from.
    distilled = "distill" in _metadata(directory)
    if isinstance(bundle, TextData):
        teacher = info.build(spec=model_spec)
    elif distilled:
        teacher = _recorded_teacher(directory, info, model_spec)
    else:
        teacher = model
    scores = _scores(model, bundle, teacher=teacher, device=device, distill=distilled)
    model.cpu()
    macs, params = count(model, info.example_inputs())
    speed = latencies(model, _sample(info), device)
    recorded = {}
    if not isinstance(directory, ModelInfo) and (Path(directory) / PLAN_FILE).is_file():
        plan = read_plan(directory)
        recorded = _budget_latency(plan.get("metrics_before", {}), plan.get("metrics_after", {}))
    return Evaluation({**scores, "macs": macs, "params": params, **recorded}, speed)


def _metadata(source: Source) -> dict[str, Any]:
    """A pruned folder's plan metadata (``{}`` for other sources)."""
    if isinstance(source, ModelInfo) or not (Path(source) / PLAN_FILE).is_file():
        return {}
    return read_plan(source)["metadata"]


def _recorded_teacher(directory: Source, info: ModelInfo, spec: str | None) -> nn.Module:
    """The unpruned model a pruned folder records (:func:`load_teacher`)."""
    record = _metadata(directory).get("teacher")
    if not isinstance(record, dict):
        raise ConfigError(
            f"'{directory}' does not record the model it was pruned from, which distillation "
            "learns from; prune it again with this version of gfsprune"
        )
    return load_teacher(info, record, spec=spec, where=Path(directory))


def _check_finite(model: nn.Module) -> None:
    """Refuse weights holding NaN or infinity: every score of such a model is NaN, which is
    no measurement (issue 28: eval printed ``loss nan`` and succeeded)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise ModelError(
                f"the model's weights hold NaN or infinite values (first in '{name}'); "
                "restore them, or train or prune the model again."
            )


def compare_model(
    source: Source,
    out: str | os.PathLike,
    *,
    config: CompareConfig,
    data: str | None = None,
    weights: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> Comparison:
    """:func:`gfsprune.workflow.compare.compare` on a trained model (a folder or a
    :class:`ModelInfo` with its ``weights``); writes the report to ``out``.

    ``scratch`` trains with the model's pre-training recipe, for its epochs plus the
    fine-tuning epochs, unless ``config.scratch`` is given. ``out/results.json`` is rewritten
    as each method finishes; ``resume=True`` continues an interrupted comparison with the same
    options, reusing the methods it finished.
    """
    _refuse_torchrun("compare")
    device = resolve_device(device)
    model, info, bundle = _open(source, data=data, weights=weights, seed=config.seed)
    _refuse_text("compare", bundle)
    if config.distill is None:
        require_labels(bundle)  # before the folder is claimed
    config = _with_scratch(config, info, info.name if isinstance(source, ModelInfo) else source)
    settings = {
        **_source_settings(source, info),
        "data": bundle.name,
        **_compare_settings(config),
    }
    run = Run("compare", settings)
    out = claim(out, run, resume=resume)
    return _compare(model, info, bundle, config, out=out, run=run, progress=progress, device=device)


def _with_scratch(config: CompareConfig, info: ModelInfo, source: Path | str) -> CompareConfig:
    """``config`` with ``scratch`` set from the model's pre-training recipe, if needed."""
    if config.scratch is not None or "scratch" not in config.methods:
        return config
    if not info.pretrain:
        raise ConfigError(
            f"'{source}' does not record its pre-training recipe, which 'scratch' "
            "repeats; leave scratch out of the methods (methods=)."
        )
    try:
        recipe = TrainConfig(**info.pretrain)
    except (TypeError, ConfigError) as err:
        raise FileFormatError(
            f"the pre-training recipe in '{source}' is damaged ({err}); leave scratch out "
            "of the methods (methods=) or train the model again."
        ) from err
    epochs = recipe.epochs + config.finetune.epochs
    scratch = dataclasses.replace(recipe, epochs=epochs, seed=config.seed)
    return dataclasses.replace(config, scratch=scratch)


def _compare_settings(config: CompareConfig) -> dict[str, Any]:
    """The options that decide a comparison's numbers, as JSON (``latency`` only where
    set, so that a comparison at a MACs budget resumes as before it existed)."""
    settings = {**dataclasses.asdict(config), "prune": config.prune.settings()}
    if config.latency is None:
        del settings["latency"]
    return settings


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
    history = _fit(
        model, bundle, pretrain, out / "model", resume=True, progress=progress, device=device
    )
    _save_model(model, info, out / "model", history)
    return _compare(
        model.eval(), info, bundle, settings, out=out, run=run, progress=progress, device=device
    )
