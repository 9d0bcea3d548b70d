"""Local Hugging Face models: ``hf:DIR``, a folder written by ``save_pretrained``.

The folder holds ``config.json`` and its weights (``model.safetensors``, or
``pytorch_model.bin`` read with ``torch.load(weights_only=True)``); they load offline through
``transformers``' Auto classes (its ``hf`` extra), chosen from the config's ``architectures``.
Code a folder ships (``auto_map``) is never run: ``trust_remote_code`` stays off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from gfsprune.errors import ConfigError, first_line
from gfsprune.models._source import ModelSource

__all__ = ["HuggingFace"]

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# The preprocessor description is a few hundred bytes; a bigger one is not worth reading.
_MAX_PREPROCESSOR_BYTES = 1 << 20
# Auto classes by the suffix of the config's architecture; the heads return ``.logits``.
_HEADS = {
    "ForImageClassification": "AutoModelForImageClassification",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
}


class _Logits(nn.Module):
    """A transformers classifier that returns its logits tensor instead of a ``ModelOutput``,
    as every other model gfsprune trains and prunes does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs).logits


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
                    "pass the model's own input size (--input-size)"
                )
        arch = (getattr(config, "architectures", None) or [""])[0]
        head = next((auto for suffix, auto in _HEADS.items() if arch.endswith(suffix)), None)
        if head is None and num_classes is not None:
            raise ConfigError(
                f"hf:{name} is a {arch or 'model'} without a classification head, so "
                f"num_classes={num_classes} does not apply; leave it out"
            )
        if num_classes is not None and num_classes != config.num_labels:
            options = {"num_labels": num_classes, "ignore_mismatched_sizes": True, **options}
        auto = getattr(transformers, head or "AutoModel")
        try:
            model = auto.from_pretrained(
                folder,
                config=config if "num_labels" not in options else None,
                local_files_only=True,
                trust_remote_code=False,
                weights_only=True,
                **options,
            )
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
            reason = first_line(err) or type(err).__name__
            raise ConfigError(
                f"transformers could not load hf:{name} ({reason}); pass a folder written by "
                "save_pretrained"
            ) from err
        return _Logits(model) if head else model

    def data_config(self, name: str) -> dict[str, Any]:
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
        return found


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
