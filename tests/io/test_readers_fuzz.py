"""Every reader of a gfsprune file, given mutated JSON, returns a valid object or raises a
one-line GfsPruneError naming the file; never another exception."""

from __future__ import annotations

import copy
import json
import math
import os
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gfsprune import Macs, PruneConfig, prune, save
from gfsprune.errors import FileFormatError, GfsPruneError
from gfsprune.io.folders import Run, read_run, write_run
from gfsprune.io.model_info import ModelInfo, read_model_info
from gfsprune.io.progress import read_progress, write_progress
from gfsprune.io.results import read_results
from gfsprune.io.saved import read_plan
from tests.nets import Coupled

DELETE = object()
JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.sampled_from([-1, 0, 1, 2**31, 10**12, 1e9, -1e9, 1e300, math.inf, math.nan])
    | st.floats()
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
MUTATIONS = st.lists(
    st.tuples(st.integers(0, 10**6), st.one_of(st.just(DELETE), JUNK)), min_size=1, max_size=3
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document, the root first."""
    places = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            places += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            places += _paths(item, (*prefix, index))
    return places


def _mutate(document: object, mutations: list) -> object:
    document = copy.deepcopy(document)
    for pick, junk in mutations:
        places = _paths(document)
        place = places[pick % len(places)]
        if not place:
            document = None if junk is DELETE else junk
            continue
        parent = document
        for key in place[:-1]:
            parent = parent[key]
        if junk is DELETE:
            del parent[place[-1]]
        else:
            parent[place[-1]] = junk
    return document


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> dict[str, tuple[Path, object, Callable[[Path], object]]]:
    """For each file format: where to write it, a valid document, and how to read it."""
    folder = tmp_path_factory.mktemp("valid")
    data = [(torch.randn(8, 3, 4, 4), torch.randint(0, 4, (8,)))]
    result = prune(
        Coupled(),
        data,
        data[0][0][:2],
        target=Macs(0.6),
        progress=False,
        config=PruneConfig(candidates=3),
    )
    info = ModelInfo(
        "digits_cnn", {"num_classes": 10, "in_channels": 1}, "digits", (1, 8, 8), {"epochs": 2}
    )
    save(result, folder / "plan", metadata=asdict(info))
    settings_ = {"target": "Macs(0.6)"}
    layers = [(p.name, p.width) for p in result.plan]
    write_progress(folder / "progress.json", settings_, result.plan, result.layers, 3)
    write_run(folder, Run("compare", {"seed": 0}, {"torch": "2"}))
    row = dict(
        macs=5,
        params=2,
        acc_pruned=0.5,
        loss_pruned=1.0,
        seconds=0.1,
        latency_b1=1e-3,
        latency_b64=2e-2,
        gpu_latency_b1=1e-4,
        gpu_latency_b64=2e-4,
        epochs={"0": {"acc": 0.5, "loss": 1.0}, "1": {"acc": 0.9, "loss": 0.3}},
    )
    base = {"acc": 0.9, "loss": 0.2, "macs": 10, "params": 4, "latency_b1": 2e-3}
    results = {"base": {**base, "latency_b64": 4e-2}, "methods": {"gfs": row}}
    formats = {
        "model.json": (
            folder / "model.json",
            {"format": "gfsprune-model", **asdict(info), "history": []},
            read_model_info,
        ),
        "plan.json": (folder / "plan" / "plan.json", None, lambda path: read_plan(path.parent)),
        "run.json": (folder / "run.json", None, read_run),
        "results.json": (folder / "results.json", results, read_results),
        "progress.json": (
            folder / "progress.json",
            None,
            lambda path: read_progress(path, settings_, layers, max_drawn=100),
        ),
    }
    valid = {}
    for name, (path, document, reader) in formats.items():
        if document is None:
            document = json.loads(path.read_text())
        path.write_text(json.dumps(document))
        reader(path)  # the unmutated document reads
        valid[name] = (path, document, reader)
    return valid


@pytest.mark.parametrize(
    "name", ["model.json", "plan.json", "run.json", "results.json", "progress.json"]
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutations=MUTATIONS)
def test_mutated_files_give_a_gfsprune_error_or_a_valid_object(documents, name, mutations) -> None:
    path, document, reader = documents[name]
    original = path.read_text()
    path.write_text(json.dumps(_mutate(document, mutations)))
    try:
        reader(path)
    except FileFormatError as err:
        message = str(err)
        assert str(path) in message and "\n" not in message, message
    except GfsPruneError as err:  # progress.json: settings of another run are a ConfigError
        assert name == "progress.json" and "other settings" in str(err), err
    finally:
        path.write_text(original)


@pytest.mark.parametrize("name", ["plan.json", "progress.json"])
def test_a_scale_beyond_the_layers_width_is_refused(documents, name) -> None:
    """The mean-field scale is width / kept: 1e308 overflowed the masks (issue 28)."""
    path, document, reader = documents[name]
    original = path.read_text()
    changed = json.loads(original)
    entries = changed["layers"] if name == "plan.json" else changed["plan"]
    entries[0]["scale"] = 1e308
    path.write_text(json.dumps(changed))
    try:
        with pytest.raises(FileFormatError, match=r"scale' must be a number of at most"):
            reader(path)
    finally:
        path.write_text(original)


@pytest.mark.parametrize(
    "name", ["model.json", "plan.json", "run.json", "results.json", "progress.json"]
)
def test_a_fifo_in_place_of_a_file_is_refused_not_waited_on(documents, name) -> None:
    path, _, reader = documents[name]
    original = path.read_text()
    path.unlink()
    os.mkfifo(path)
    outcome: list[BaseException] = []
    # a daemon thread: were the FIFO opened, the test would fail instead of hanging
    thread = threading.Thread(target=lambda: outcome.append(_raised(reader, path)), daemon=True)
    try:
        thread.start()
        thread.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], GfsPruneError), outcome
        assert "regular file" in str(outcome[0]) or "No plan.json" in str(outcome[0])
    finally:
        path.unlink()
        path.write_text(original)


def _raised(reader: Callable[[Path], object], path: Path) -> BaseException | None:
    try:
        reader(path)
    except BaseException as err:  # noqa: BLE001 (handed to the test's thread)
        return err
    return None
