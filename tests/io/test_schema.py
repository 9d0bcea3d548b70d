"""Checked JSON fields: errors name the file and the field on one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gfsprune.errors import FileFormatError
from gfsprune.io.schema import read_json


def test_a_field_named_with_a_line_break_is_named_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"format": "x", "options": {"a\nb": []}}))
    options = read_json(path, fmt="x")["options"]
    with pytest.raises(FileFormatError) as caught:
        options["a\nb"].require(str, "a string")
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "options.'a\\nb'" in message
