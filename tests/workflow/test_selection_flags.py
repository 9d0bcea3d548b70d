"""The selection flags are generated from PruneConfig: one per option, its help from the
config's documentation, parsed back into the config."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from gfsprune import PruneConfig
from gfsprune.core.config import GROUPS, option_docs
from gfsprune.core.tuning import LayerTuning
from gfsprune.errors import ConfigError
from gfsprune.workflow.selection_flags import add_selection_flags, selection_config


def _parser(**options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_selection_flags(parser, **options)
    return parser


def test_every_option_has_a_flag_with_its_documented_help() -> None:
    parser = _parser()
    flags = {a.dest: a for a in parser._actions}
    docs = option_docs()
    for field in dataclasses.fields(PruneConfig):
        if field.name in ("seed", "device"):  # the commands' own --seed and --device
            continue
        assert field.name in flags, field.name
        first_words = " ".join(docs[field.name].replace("``", "").split()[:3])
        assert flags[field.name].help.startswith(first_words)


def test_every_option_is_in_one_group_and_its_flag_under_that_title() -> None:
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(PruneConfig))
    titles = {
        action.dest: group.title
        for group in _parser()._action_groups
        for action in group._group_actions
    }
    for title, names in GROUPS.items():
        assert all(titles[n] == title for n in names if n not in ("seed", "device"))


def test_defaults_give_the_default_config() -> None:
    assert selection_config(_parser().parse_args([])) == PruneConfig()


def test_flags_reach_every_option() -> None:
    args = _parser().parse_args(
        ["--candidates", "0", "--tie", "0.001", "--refit", "--tuning", "3", "--tuning-lr", "0.1"]
        + ["--schedule", "fast", "--round-to", "4", "--no-rescale", "--strategy", "forward"]
    )
    config = selection_config(args, seed=2)
    assert config == PruneConfig(
        candidates=None,
        tie=0.001,
        refit=True,
        tuning=LayerTuning(steps=3, lr=0.1),
        schedule="fast",
        round_to=4,
        rescale=False,
        seed=2,
    )


def test_left_out_options_have_no_flag_and_keep_their_default() -> None:
    parser = _parser(leave_out=("strategy",))
    with pytest.raises(SystemExit):
        parser.parse_args(["--strategy", "backward"])
    assert selection_config(parser.parse_args([])).strategy == PruneConfig().strategy


def test_negative_candidates_are_refused() -> None:
    with pytest.raises(ConfigError, match="--candidates must be 0"):
        selection_config(_parser().parse_args(["--candidates", "-1"]))
