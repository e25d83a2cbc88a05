"""What spec validation accepts and fixes up (the refusals are rows of tests/test_bad_inputs.py):
relative database paths made absolute against the launching directory, ordinary YAML
aliases, the prompt-length limit read from a model's config without loading it."""

from __future__ import annotations

import os

import yaml

from helpers import tiny_spec
from scrutable.models import max_positions, tiny_gpt2
from scrutable.sweep.search_space import Dimension
from scrutable.sweep.spec import max_prompt_length, parse_yaml, spec_from_mapping

SPEC = tiny_spec()


def test_relative_sqlite_paths_are_resolved_against_the_launching_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = spec_from_mapping(
        {**SPEC, "optuna_storage": "sqlite:///db/optuna.db", "tracking": {"uri": "sqlite:///mlflow.db?timeout=5"}},
        "spec",
    )
    assert spec.optuna_storage == f"sqlite:///{tmp_path / 'db' / 'optuna.db'}"
    assert spec.tracking.uri == f"sqlite:///{tmp_path / 'mlflow.db'}?timeout=5"
    absolute = spec_from_mapping({**SPEC, "optuna_storage": f"sqlite:///{tmp_path}/o.db"}, "spec")
    assert absolute.optuna_storage == f"sqlite:///{tmp_path}/o.db"  # already absolute: unchanged
    server = spec_from_mapping({**SPEC, "optuna_storage": "postgresql://u@db/optuna"}, "spec")
    assert server.optuna_storage == "postgresql://u@db/optuna"
    assert not os.listdir(tmp_path)  # the check writes a probe and deletes it; no database is created


def test_ordinary_aliases_still_load():
    text = "defaults: &d {low: 0.01, high: 1.0, log: true}\nsearch:\n  alpha: *d\n  learning_rate: *d\n"
    assert parse_yaml(text, "spec")["search"] == {"alpha": yaml.safe_load(text)["defaults"]} | {
        "learning_rate": yaml.safe_load(text)["defaults"]
    }


def test_the_prompt_length_limit_read_without_loading_agrees_with_the_loaded_model():
    assert max_prompt_length("tiny-gpt2", None) == max_positions(tiny_gpt2(os.environ["SCRUTABLE_DATA_DIR"])) // 2
    assert max_prompt_length("tiny-t5", None) is None  # relative positions: no hard limit


def test_a_ranges_ends_include_the_zero_and_both_bounds():
    assert Dimension(low=0.01, high=1.0, log=True, zero=True).ends()[0] == 0.0
    ends = Dimension(low=0.01, high=1.0, log=True, zero=True).ends()
    assert min(e for e in ends if e > 0) == 0.01 and max(ends) == 1.0
    assert Dimension(low=2, high=9, integer=True).ends() == [2, 9]
