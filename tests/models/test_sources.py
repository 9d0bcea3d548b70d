"""Every model source builds through the one resolver: torchvision, timm, hf:DIR, user code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from gfsprune import models
from gfsprune.errors import ConfigError

transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")
pytest.importorskip("torchvision")

USER_CODE = """
import torch
from torch import nn

def make(num_classes=10, width=4):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )

not_a_model = 3
"""


def _forward(model: nn.Module, size: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(
            torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        )


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "timm:resnet18"])
def test_package_models_build_with_random_weights_at_a_small_input(spec: str) -> None:
    assert _forward(models.get(spec, num_classes=5, image_size=32)).shape == (2, 5)
    assert not models.runs_code(spec)


def test_timm_transformers_take_the_input_size_and_report_their_preprocessing() -> None:
    vit = models.get("timm:vit_tiny_patch16_224", num_classes=3, image_size=32)
    assert _forward(vit).shape == (2, 3)
    vit = models.get("torchvision:vit_b_32", num_classes=3, image_size=32)
    assert vit.image_size == 32 and _forward(vit).shape == (2, 3)
    config = models.data_config("timm:resnet18")
    assert config["input_size"] == (3, 224, 224) and len(config["mean"]) == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("timm:resnet81", r"^unknown timm model 'resnet81'; did you mean resnet18"),
        ("torchvision:resnet81", r"^unknown torchvision model 'resnet81'; did you mean resnet18"),
        ("resnet21", r"^unknown model 'resnet21'; did you mean resnet20"),
    ],
)
def test_unknown_names_get_close_matches_in_one_line(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        models.get(spec)
    assert "\n" not in str(info.value)


def test_available_lists_the_package_sources_with_their_prefix() -> None:
    assert "timm:resnet18" in models.available("timm", "resnet1*")
    assert models.available("torchvision", "resnet18") == ["torchvision:resnet18"]
    with pytest.raises(ConfigError, match="unknown model source 'hf'; choose zoo, torchvision"):
        models.available("hf")


def test_a_file_spec_runs_the_users_file(tmp_path: Path) -> None:
    path = tmp_path / "net.py"
    path.write_text(USER_CODE)
    spec = f"{path}:make"
    assert models.runs_code(spec)
    # in_channels and image_size are dropped where the callable does not take them
    model = models.get(spec, num_classes=7, in_channels=3, image_size=16, width=6)
    assert _forward(model, 16).shape == (2, 7) and model[0].out_channels == 6
    with pytest.raises(ConfigError, match=r"takes no option 'depth'; its parameters are num_cl"):
        models.get(spec, depth=2)
    with pytest.raises(ConfigError, match=r"returned a int, not a torch.nn.Module"):
        models.get(f"{path}:not_a_model.__abs__")
    with pytest.raises(ConfigError, match=r"has no 'missing'"):
        models.get(f"{path}:missing")
    with pytest.raises(ConfigError, match=r"^model file '.*nope.py' of .* does not exist"):
        models.get(f"{tmp_path}/nope.py:make")


def test_a_module_spec_imports_the_users_module(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "gfs_user_nets.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = models.get("gfs_user_nets:make", num_classes=4)
    assert _forward(model).shape == (2, 4)
    with pytest.raises(ConfigError, match=r"^no module 'gfs_no_such_module' \(model spec"):
        models.get("gfs_no_such_module:make")


def _tiny_vit(folder: Path) -> nn.Module:
    config = transformers.ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        image_size=16,
        patch_size=8,
        num_labels=3,
        architectures=["ViTForImageClassification"],
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(folder)
    return model


def test_an_hf_folder_loads_offline_with_its_weights(tmp_path: Path) -> None:
    original = _tiny_vit(tmp_path / "vit")
    assert (tmp_path / "vit" / "model.safetensors").is_file()
    model = models.get(f"hf:{tmp_path / 'vit'}", num_classes=3, in_channels=3, image_size=16)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), original(x).logits)
    assert models.data_config(f"hf:{tmp_path / 'vit'}")["input_size"] == (3, 16, 16)
    with pytest.raises(ConfigError, match=r"configured for image_size=16 \(config.json\), not 32"):
        models.get(f"hf:{tmp_path / 'vit'}", image_size=32)


def test_an_hf_folder_with_a_pytorch_bin_loads_it_weights_only(tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    original = _tiny_vit(folder)
    (folder / "model.safetensors").unlink()
    torch.save(original.state_dict(), folder / "pytorch_model.bin")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(models.get(f"hf:{folder}")(x), original(x).logits)


def test_hf_folders_that_need_their_own_code_or_lack_files_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    _tiny_vit(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ConfigError, match=r"needs code of its own \(auto_map"):
        models.get(f"hf:{folder}")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"has config.json but no weights"):
        models.get(f"hf:{folder}")
    with pytest.raises(ConfigError, match=r"must be a folder with config.json"):
        models.get(f"hf:{tmp_path / 'none'}")
