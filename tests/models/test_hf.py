"""hf:DIR transformers come prepared to prune (one tensor out, Conv1D made linear), and a
pruned one rebuilds exactly from its folder plus the plan, grouped-query attention included."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import gfsprune
from gfsprune import Macs, PruneConfig, models
from gfsprune.core.losses import distill
from gfsprune.errors import ConfigError
from gfsprune.io.onnx import export_onnx
from gfsprune.models.hf import TransformersOutput, load_tokenizer, prepare
from gfsprune.surgery import prune_channels
from tests import hf_nets

transformers = pytest.importorskip("transformers")


def test_language_and_base_models_load_prepared_with_the_folders_weights(tmp_path) -> None:
    raw = hf_nets.raw("gpt2", "LMHeadModel")
    hf_nets.save_folder(tmp_path / "gpt2", raw)
    model = models.get(f"hf:{tmp_path / 'gpt2'}")
    assert isinstance(model, TransformersOutput) and model.field == "logits"
    assert type(model.model.transformer.h[0].attn.c_attn) is nn.Linear
    x = hf_nets.inputs("gpt2")
    with torch.no_grad():
        torch.testing.assert_close(model(**x), raw(**x).logits, rtol=1e-5, atol=1e-6)
    assert models.data_config(f"hf:{tmp_path / 'gpt2'}") == {"max_length": 16}
    hf_nets.save_folder(tmp_path / "bert", hf_nets.raw("bert", num_labels=3), tokenizer=False)
    assert prepare(hf_nets.raw("bert")).field == "last_hidden_state"
    assert models.data_config(f"hf:{tmp_path / 'bert'}")["max_length"] == 16


def _pruned(folder: Path, family: str) -> gfsprune.PruneResult:
    model = models.get(f"hf:{folder}")
    batches = [hf_nets.inputs(family, 8, seed=s) for s in range(3)]
    data, loss_fn = distill(model, batches)
    return gfsprune.prune(
        model,
        data,
        hf_nets.inputs(family, 1),
        target=Macs(0.5),
        config=PruneConfig(candidates=4),
        loss_fn=loss_fn,
        progress=False,
    )


@pytest.mark.parametrize(
    ("family", "head"), [("gpt2", "LMHeadModel"), ("llama", "ForCausalLM")], ids=["gpt2", "gqa"]
)
def test_a_pruned_hf_model_rebuilds_exactly_from_its_folder_and_plan(
    tmp_path, family, head
) -> None:
    hf_nets.save_folder(tmp_path / "base", hf_nets.raw(family, head), tokenizer=False)
    result = _pruned(tmp_path / "base", family)
    assert abs(result.macs_ratio - 0.5) < 0.02
    metadata = {"name": f"hf:{tmp_path / 'base'}", "options": {}, "input_shape": [8]}
    gfsprune.save(result, tmp_path / "pruned", metadata=metadata)
    loaded = gfsprune.load(tmp_path / "pruned")  # no base model: the folder is the recipe
    x = hf_nets.inputs(family, 3, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x), result.model(**x), rtol=0, atol=0)
    if family == "llama":
        for block in loaded.model.model.layers:  # whole key/value groups of 2 query heads
            attention = block.self_attn
            assert attention.q_proj.out_features == 2 * attention.k_proj.out_features
            assert attention.num_key_value_groups == 2


def test_a_transformers_model_must_be_prepared_before_pruning() -> None:
    raw = hf_nets.raw("llama", "ForCausalLM")
    x = hf_nets.inputs("llama")
    with pytest.raises(ConfigError, match=r"transformers LlamaForCausalLM, .* pass gfsprune"):
        gfsprune.prune(raw, [(x, x)], x, target=Macs(0.5), progress=False)


def test_a_folder_without_a_tokenizer_is_refused_in_one_line(tmp_path) -> None:
    hf_nets.save_folder(tmp_path, hf_nets.raw("llama"), tokenizer=False)
    with pytest.raises(ConfigError, match=r"^text data needs the tokenizer of hf:.*, but the"):
        load_tokenizer(str(tmp_path))
    hf_nets.save_folder(tmp_path, hf_nets.raw("llama"))
    assert load_tokenizer(str(tmp_path))("w2 w3")["input_ids"] == [2, 3]


def test_a_pruned_hf_vision_transformer_exports_to_onnx(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    model, x = hf_nets.tiny("vit"), hf_nets.inputs("vit")
    pruned = prune_channels(
        model, x, {"model.layers.0.attention": list(range(8)), "model.layers.1.mlp.fc1": [0, 5]}
    )
    path = export_onnx(pruned, x, tmp_path / "vit.onnx")  # checks it with onnxruntime
    assert path.stat().st_size > 0


def test_the_batched_evaluator_replays_transformers_outputs_as_the_naive_one_scores() -> None:
    # The pooler layer's prefix ends with BertModel's ModelOutput, indexed by position.
    model = hf_nets.tiny("bert", "ForSequenceClassification", num_labels=3)
    g = torch.Generator().manual_seed(0)
    batches = [(hf_nets.inputs("bert", 6, seed=1), torch.randint(0, 3, (6,), generator=g))]
    plans = [
        gfsprune.prune(
            model,
            batches * 3,
            hf_nets.inputs("bert", 1),
            target=Macs(0.6),
            config=PruneConfig(objective="loss", candidates=4, evaluator=evaluator),
            progress=False,
        ).plan
        for evaluator in ("batched", "naive")
    ]
    assert plans[0] == plans[1]
    assert plans[0][-1].name == "model.bert.pooler.dense"


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_prepared_models_count_the_attention_products() -> None:
    x = hf_nets.inputs("llama", 1)
    eager = gfsprune.count(hf_nets.tiny("llama"), x)
    assert gfsprune.count(hf_nets.tiny("llama", attn_implementation="sdpa"), x) == eager
    linear = sum(m.in_features * m.out_features for m in _linears(hf_nets.tiny("llama")))
    assert eager[0] == linear * 8 + 2 * 2 * 4 * 8 * 8 * 8  # + QK^T and AV: layers, heads, 8x8x8


def test_a_folder_whose_weights_do_not_match_its_config_is_refused(tmp_path) -> None:
    """transformers would initialise the missing layer at random and only log it."""
    folder = hf_nets.save_folder(tmp_path / "vit", hf_nets.raw("vit"), tokenizer=False)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"weights do not match its config.json: \d+ weight"):
        models.get(f"hf:{folder}")


def test_a_pickle_payload_as_pytorch_model_bin_is_one_line(tmp_path, capsys) -> None:
    folder = hf_nets.save_folder(tmp_path / "vit", hf_nets.raw("vit"), tokenizer=False)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ConfigError, match="transformers could not load hf:") as caught:
        models.get(f"hf:{folder}")
    assert "\n" not in str(caught.value) and "ran" not in capsys.readouterr().out


class _Payload:
    def __reduce__(self):
        return print, ("ran",)
