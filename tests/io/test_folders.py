"""Output folders: a job takes a new or empty folder or its own for a resume, nothing else."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gfsprune.errors import ConfigError, FileFormatError
from gfsprune.io.folders import Run, claim, read_run
from gfsprune.workflow.cli import main
from tests.workflow.runs import one_line_error

PRUNE = Run("prune", {"target": "Macs(0.5)", "methods": ("gfs", "l1")})


def test_a_new_or_empty_folder_is_taken_and_marked(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        claim(tmp_path / "new" / "deeper", PRUNE, resume=False)
    finally:
        os.umask(old)
    marker = tmp_path / "new" / "deeper" / "run.json"
    assert read_run(marker) == Run("prune", {"target": "Macs(0.5)", "methods": ["gfs", "l1"]})
    assert stat.S_IMODE(marker.stat().st_mode) == 0o644
    (tmp_path / "empty").mkdir()
    claim(tmp_path / "empty", PRUNE, resume=False)
    assert read_run(tmp_path / "empty" / "run.json").job == "prune"


def test_a_folder_with_only_a_marker_is_taken_again(tmp_path: Path) -> None:
    claim(tmp_path, Run("train", {"epochs": 1}), resume=False)  # a run that wrote nothing
    claim(tmp_path, PRUNE, resume=False)
    assert read_run(tmp_path / "run.json").job == "prune"


def test_the_same_job_continues_only_with_resume_and_equal_settings(tmp_path: Path) -> None:
    claim(tmp_path, PRUNE, resume=False)
    (tmp_path / "progress.json").write_text("{}")
    with pytest.raises(
        ConfigError, match=r"holds an earlier prune run; pass resume=True to continue it"
    ):
        claim(tmp_path, PRUNE, resume=False)
    claim(tmp_path, PRUNE, resume=True)  # tuples compare equal to the lists read back
    other = Run("prune", {"target": "Macs(0.4)", "methods": ("gfs", "l1")})
    with pytest.raises(ConfigError, match=r"other target \(target='Macs\(0.5\)'\)"):
        claim(tmp_path, other, resume=True)
    assert read_run(tmp_path / "run.json").settings["target"] == "Macs(0.5)"


@pytest.mark.parametrize("job", ["train", "finetune", "compare", "demo"])
def test_another_jobs_folder_is_refused_even_with_resume(tmp_path: Path, job: str) -> None:
    claim(tmp_path, Run(job, {}), resume=False)
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(ConfigError, match=f"holds the output of `gfsprune {job}`"):
        claim(tmp_path, PRUNE, resume=True)
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"


def test_a_folder_gfsprune_did_not_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files gfsprune prune did not write"):
        claim(tmp_path, PRUNE, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_path_under_a_file_or_unwritable_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"is under '.*file', a file"):
        claim(tmp_path / "file" / "out", PRUNE, resume=False)
    with pytest.raises(ConfigError, match="choose another output folder"):
        claim("/proc/gfsprune-out", PRUNE, resume=False)
    assert not Path("/proc/gfsprune-out").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "its content must be an object"),
        ('{"format": "gfsprune-run"}', "missing fields"),
        (
            '{"format": "gfsprune-run", "version": 1, "job": "rm", "settings": {}, "context": {}}',
            "field 'job' must be one of train, prune",
        ),
        (
            '{"format": "gfsprune-run", "version": 1, "job": "prune", "settings": 3, '
            '"context": {}}',
            "field 'settings' must be an object",
        ),
    ],
)
def test_a_damaged_marker_is_one_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "run.json").write_text(text)
    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(FileFormatError, match=message):
        claim(tmp_path, PRUNE, resume=True)
    assert json.loads((tmp_path / "run.json").read_text()) == json.loads(text)


def test_a_folder_another_job_is_writing_into_is_refused_until_that_job_ends(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "race"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from gfsprune.io.folders import Run, claim; "
            f"claim({str(out)!r}, Run('prune', {{'target': 'Macs(0.3)'}}), resume=False); "
            "print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match="another gfsprune job is writing into"):
            claim(out, PRUNE, resume=False)
        argv = ["prune", "--model", "digits_cnn", "--data", "digits", "--macs", "0.5"]
        assert main([*argv, "--out", str(out), "--no-progress"]) == 2
        assert "another gfsprune job" in one_line_error(capsys, "prune")
        assert read_run(out / "run.json").settings == {"target": "Macs(0.3)"}
    finally:
        holder.kill()  # as kill -9: the kernel drops the lock, none is left stale
        holder.wait()
    claim(out, PRUNE, resume=False)  # the killed job had written nothing but run.json
    claim(out, PRUNE, resume=False)  # this process's own lock does not refuse it
    assert read_run(out / "run.json").settings["target"] == "Macs(0.5)"
