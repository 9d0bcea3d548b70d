"""The README's first Python example uses the public API only: ``gfsprune`` and the small
public part of ``gfsprune.workflow``."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import gfsprune.workflow


def test_the_readme_s_first_example_imports_only_public_names() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    imports = re.findall(r"^from (\S+) import (.+)$", example, flags=re.MULTILINE)
    assert imports  # it needs data and training from somewhere
    for module, names in imports:
        assert module in ("gfsprune", "gfsprune.workflow"), module
        public = set(importlib.import_module(module).__all__)
        assert {name.strip() for name in names.split(",")} <= public, names


def test_the_public_workflow_names_are_documented() -> None:
    for name in gfsprune.workflow.__all__:
        assert getattr(gfsprune.workflow, name).__doc__, name
