"""Local Hugging Face models: ``hf:DIR``, a folder written by ``save_pretrained``.

The folder holds ``config.json`` and its weights (``model.safetensors``, or
``pytorch_model.bin`` read with ``torch.load(weights_only=True)``); they load offline through
``transformers``' Auto classes (its ``hf`` extra), chosen from the config's ``architectures``.
Code a folder ships (``auto_map``) is never run: ``trust_remote_code`` stays off.

Every model is made ready to prune by :func:`prepare`: it returns one tensor (a head's
``logits``, a base model's ``last_hidden_state``), runs without a key/value cache, and
transformers' ``Conv1D`` layers (GPT-2's transposed linear layers) are ``nn.Linear``. It
runs eager attention: PyTorch's FLOP counter does not count the CPU kernels of
``scaled_dot_product_attention``, so MACs would miss the attention products.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch
from torch import nn

from gfsprune.errors import ConfigError, first_line
from gfsprune.models._source import ModelSource

__all__ = ["HuggingFace", "TransformersOutput", "load_tokenizer", "prepare"]

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# The preprocessor description is a few hundred bytes; a bigger one is not worth reading.
_MAX_PREPROCESSOR_BYTES = 1 << 20
# Auto classes by the suffix of the config's architecture: classifiers (which take
# ``num_classes``) and language models; anything else loads as its base model.
_CLASSIFIERS = {
    "ForImageClassification": "AutoModelForImageClassification",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
}
_LANGUAGE_MODELS = {"ForCausalLM": "AutoModelForCausalLM", "LMHeadModel": "AutoModelForCausalLM"}
# Files of a tokenizer that AutoTokenizer reads without running code.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


class TransformersOutput(nn.Module):
    """A transformers model that returns one tensor of its output, as every model gfsprune
    trains and prunes does.

    Attributes:
        model: The transformers model.
        field: What is returned: ``"logits"`` (a model with a head: classifier or language
            model) or ``"last_hidden_state"`` (a base model).
    """

    def __init__(self, model: nn.Module, field: str) -> None:
        super().__init__()
        self.model = model
        self.field = field
        self._positions = "position_ids" in inspect.signature(model.forward).parameters

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        ids = kwargs.get("input_ids")
        if self._positions and isinstance(ids, torch.Tensor) and "position_ids" not in kwargs:
            # One row per sample, where transformers would broadcast a single row: every
            # module's output is then batch-first, which the batched evaluator's prefix
            # cache needs (it tiles cached outputs along the batch).
            positions = torch.arange(ids.shape[-1], device=ids.device)
            kwargs["position_ids"] = positions.expand(ids.shape)
        return getattr(self.model(*args, **kwargs), self.field)


def prepare(model: nn.Module) -> TransformersOutput:
    """A transformers model made ready for :func:`gfsprune.prune` (in place, then wrapped).

    Its ``Conv1D`` layers become equivalent ``nn.Linear`` layers (the same function: weights
    transposed), its config stops building a key/value cache, its attention runs eagerly
    (whose products PyTorch's FLOP counter counts, unlike CPU ``sdpa``), and the wrapper returns
    ``logits`` for a model with a head (``*For...``, ``*LMHeadModel``), else
    ``last_hidden_state``. ``hf:DIR`` models come prepared.

    Example:
        >>> import transformers
        >>> config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16)
        >>> net = prepare(transformers.GPT2LMHeadModel(config))
        >>> net(input_ids=torch.zeros(1, 4, dtype=torch.long)).shape
        torch.Size([1, 4, 16])
    """
    if isinstance(model, TransformersOutput):
        return model
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                setattr(parent, child_name, _linear(child))
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # a cache is an output the pruned model need not keep
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")  # so that MACs count the attention products
    kind = type(model).__name__
    headed = "For" in kind or kind.endswith("LMHeadModel")
    return TransformersOutput(model, "logits" if headed else "last_hidden_state")


def _linear(conv: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` computing what transformers' ``Conv1D`` (``x @ W + b``) does."""
    weight = conv.weight  # (in, out)
    linear = nn.Linear(conv.nx, conv.nf, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        linear.bias.copy_(conv.bias)
    linear.requires_grad_(weight.requires_grad)
    return linear


class HuggingFace(ModelSource):
    """``hf:DIR``: a local transformers model, loaded offline with its weights.

    ``num_classes`` different from the config's ``num_labels`` gives a new, randomly
    initialised head; ``in_channels`` and ``image_size`` must match the config (a vision
    transformer's position embeddings fix its input size)."""

    prefix = "hf"
    listable = False

    def build(
        self,
        name: str,
        *,
        num_classes: int | None = None,
        in_channels: int | None = None,
        image_size: int | None = None,
        **options: Any,
    ) -> nn.Module:
        transformers = _transformers()
        folder = _folder(name)
        config = _config(transformers, folder)
        for key, value in (("num_channels", in_channels), ("image_size", image_size)):
            own = getattr(config, key, None)
            if value is not None and own is not None and own != value:
                raise ConfigError(
                    f"hf:{name} is configured for {key}={own} (config.json), not {value}; "
                    "pass the model's own input shape (input_shape=)"
                )
        arch = (getattr(config, "architectures", None) or [""])[0]
        head = _auto_class(_CLASSIFIERS, arch)
        language = _auto_class(_LANGUAGE_MODELS, arch)
        if head is None and num_classes is not None:
            raise ConfigError(
                f"hf:{name} is a {arch or 'model'} without a classification head, so "
                f"num_classes={num_classes} does not apply; leave it out"
            )
        if num_classes is not None and num_classes != config.num_labels:
            options = {"num_labels": num_classes, "ignore_mismatched_sizes": True, **options}
        auto = getattr(transformers, head or language or "AutoModel")
        verbosity = transformers.logging.get_verbosity()
        bars = transformers.utils.logging.is_progress_bar_enabled()
        try:
            # its key report (weights missing from the folder) is refused below instead, and
            # torch's pickle-protocol note and the loading bars are not the user's concern
            transformers.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, loading = auto.from_pretrained(
                    folder,
                    config=config if "num_labels" not in options else None,
                    local_files_only=True,
                    trust_remote_code=False,
                    weights_only=True,
                    attn_implementation="eager",
                    output_loading_info=True,
                    **options,
                )
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, UnpicklingError) as err:
            reason = first_line(err) or type(err).__name__
            raise ConfigError(
                f"transformers could not load hf:{name} ({reason}); pass a folder written by "
                "save_pretrained"
            ) from err
        finally:
            transformers.logging.set_verbosity(verbosity)
            if bars:
                transformers.utils.logging.enable_progress_bar()
        _check_loaded(model, loading, name, new_head="num_labels" in options)
        return prepare(model)

    def data_config(self, name: str) -> dict[str, Any]:
        """``input_size``, ``mean`` and ``std`` of an image model; ``num_classes`` of a
        classifier; ``max_length`` (tokens) of a model with position embeddings."""
        transformers = _transformers()
        folder = _folder(name)
        config = _config(transformers, folder)
        found: dict[str, Any] = {}
        size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
        if isinstance(size, int) and isinstance(channels, int):
            found["input_size"] = (channels, size, size)
        path = folder / "preprocessor_config.json"
        if path.is_file() and path.stat().st_size <= _MAX_PREPROCESSOR_BYTES:
            try:
                preprocessor = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ConfigError(f"'{path}' is not valid JSON ({err}); restore it") from err
            for key, ours in (("image_mean", "mean"), ("image_std", "std")):
                value = preprocessor.get(key) if isinstance(preprocessor, dict) else None
                if isinstance(value, list) and all(isinstance(v, int | float) for v in value):
                    found[ours] = tuple(float(v) for v in value)
        if _auto_class(_CLASSIFIERS, (getattr(config, "architectures", None) or [""])[0]):
            found["num_classes"] = config.num_labels
        for key in ("max_position_embeddings", "n_positions"):  # the longest sequence it takes
            if isinstance(getattr(config, key, None), int):
                found["max_length"] = getattr(config, key)
                break
        return found


def load_tokenizer(name: str) -> Any:
    """The tokenizer saved in the ``hf:`` folder ``name``, loaded offline without its code.

    Raises:
        ConfigError: the folder has no tokenizer, or transformers cannot read it.
    """
    transformers = _transformers()
    folder = _folder(name)
    if not any((folder / file).is_file() for file in _TOKENIZER_FILES):
        raise ConfigError(
            f"text data needs the tokenizer of hf:{name}, but the folder has none "
            f"({', '.join(_TOKENIZER_FILES)}); save it there with tokenizer.save_pretrained"
        )
    try:
        return transformers.AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, TypeError, KeyError) as err:
        reason = first_line(err) or type(err).__name__
        raise ConfigError(
            f"transformers could not load the tokenizer of hf:{name} ({reason}); save it there "
            "again with tokenizer.save_pretrained"
        ) from err


def _check_loaded(model: nn.Module, loading: dict, name: str, *, new_head: bool) -> None:
    """Refuse a model some of whose weights the folder lacks (transformers initialises them
    at random and only logs it; issue 28), except a new classification head's."""
    base = getattr(model, "base_model_prefix", "")
    headed = model is not getattr(model, "base_model", model)
    missing = [
        key
        for key in loading.get("missing_keys", ())
        if not (new_head and headed and not key.startswith(f"{base}."))
    ]
    if missing:
        raise ConfigError(
            f"hf:{name}'s weights do not match its config.json: {len(missing)} weight(s) such "
            f"as '{sorted(missing)[0]}' are missing from the folder; pass a folder written by "
            "save_pretrained"
        )


def _auto_class(classes: dict[str, str], arch: str) -> str | None:
    """The Auto class for the architecture ``arch``, by its suffix, if ``classes`` has one."""
    return next((auto for suffix, auto in classes.items() if arch.endswith(suffix)), None)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ConfigError(
            f"hf:DIR needs transformers, which is not importable here ({err}); "
            "pip install 'gfsprune[hf]'"
        ) from err
    return transformers


def _folder(name: str) -> Path:
    folder = Path(name).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"hf:{name} must be a folder with config.json and its weights (written by "
            "save_pretrained); there is no config.json in it"
        )
    if not any((folder / weights).is_file() for weights in _WEIGHTS):
        raise ConfigError(
            f"hf:{name} has config.json but no weights ({', '.join(_WEIGHTS)}); save the model "
            "with save_pretrained"
        )
    return folder


def _config(transformers: Any, folder: Path) -> Any:
    try:
        config = transformers.AutoConfig.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as err:
        reason = first_line(err) or type(err).__name__
        raise ConfigError(f"cannot read '{folder / 'config.json'}' ({reason})") from err
    if getattr(config, "auto_map", None):
        raise ConfigError(
            f"hf:{folder} needs code of its own (auto_map in config.json); gfsprune never runs "
            "code from a model folder. Load it in Python and pass the model instead"
        )
    return config
