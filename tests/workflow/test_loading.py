"""A model the user describes (a ModelInfo) is completed from its data and built; what it
fixes is kept, and what does not fit the data is refused naming the option."""

from __future__ import annotations

import pytest
import torch

from gfsprune.errors import DataError
from gfsprune.io.model_info import ModelInfo
from gfsprune.io.saved import write_weights
from gfsprune.workflow.loading import open_spec


def test_a_description_is_completed_from_the_data() -> None:
    model, info, bundle = open_spec(ModelInfo("digits_cnn"), data="digits")
    assert info.input_shape == tuple(bundle.input_shape) == (1, 8, 8) and info.data == "digits"
    assert info.options == {"num_classes": 10, "in_channels": 1, "image_size": 8}
    assert model(info.example_inputs()).shape == (1, 10)
    assert info.weights is None and not model.training


def test_classes_that_do_not_fit_the_data_are_refused_naming_the_option() -> None:
    request = ModelInfo("digits_cnn", options={"num_classes": 3})
    with pytest.raises(DataError, match=r"asked for 3 classes \(num_classes=\) but data 'digits'"):
        open_spec(request, data="digits")


def test_the_weights_file_is_loaded_and_its_digest_recorded(tmp_path) -> None:
    model, info, _ = open_spec(ModelInfo("digits_cnn"), data="digits", seed=1)
    write_weights(tmp_path / "w.safetensors", model)
    loaded, again, _ = open_spec(
        ModelInfo("digits_cnn"), data="digits", weights=tmp_path / "w.safetensors"
    )
    assert again.weights is not None and len(again.weights) == 64
    x = info.example_inputs()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
