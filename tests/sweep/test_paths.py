"""Every place on disk a sweep names reaches Tune and the trials as an absolute path,
wherever the value came from: the dataclass default, the sweep file, `--set`, `--out`, or
`$SCRUTABLE_DATA_DIR`. A relative path would mean a different folder in a trial's working
directory (Tune runs trials elsewhere), and `storage: runs` unset once reached pyarrow as
"runs" and killed the README's first command.

Relative inputs are given from a launching directory (`monkeypatch.chdir`), so the
expected absolute path is that directory joined with the input, and never the repository.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import yaml

from scrutable.cli import main
from scrutable.sweep.spec import PATH_FIELDS, SweepSpec, Tracking, load_spec
from scrutable.trainables import METHODS

REPO = Path(__file__).resolve().parents[2]
PLACE = re.compile(r"dir|storage|path|file|uri|folder")
# The spec fields that name a place: the plain paths (PATH_FIELDS) and the database URIs.
URI_FIELDS = {"optuna_storage", "tracking.uri"}


def place_fields(cls, prefix=""):
    names = set()
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(field.type) or field.name == "tracking":
            continue
        if PLACE.search(field.name):
            names.add(prefix + field.name)
    return names


def test_every_field_that_names_a_place_is_resolved():
    """A new path field must join PATH_FIELDS (or be a database URI resolved like the others)."""
    assert place_fields(SweepSpec) == set(PATH_FIELDS) | {"optuna_storage"}
    assert place_fields(Tracking, "tracking.") == {"tracking.uri"}
    for method in METHODS.values():  # the trials' configs: their only place is the data folder
        assert place_fields(method.config_cls) == {"data_dir"}, method.name


@pytest.fixture
def launch(tmp_path, monkeypatch):
    """A launching directory that is not the repository, and a spec without any place in it."""
    here = tmp_path / "launch"
    here.mkdir()
    monkeypatch.chdir(here)
    raw = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())
    for key in [*PATH_FIELDS, "optuna_storage", "tracking"]:
        raw.pop(key, None)
    (here / "spec.yaml").write_text(yaml.safe_dump(raw))
    data = Path(os.environ["SCRUTABLE_DATA_DIR"])
    monkeypatch.setenv("SCRUTABLE_DATA_DIR", os.path.relpath(data, here))  # relative, from here
    return here, data


def assert_absolute(spec: SweepSpec, expected: dict[str, Path]) -> None:
    for key in PATH_FIELDS:
        value = getattr(spec, key)
        assert Path(value).is_absolute(), (key, value)
        assert Path(value) == expected[key], key
    for key, value in (("optuna_storage", spec.optuna_storage), ("tracking.uri", spec.tracking.uri)):
        if value is not None:  # None: the sweep folder's own sqlite file, built from storage
            assert value == f"sqlite:///{expected[key]}", key
    config = spec.trial_config(spec.space.example_point())
    assert config.data_dir == str(expected["data_dir"])  # what each trial is given


def test_defaults_resolve_against_the_launching_directory(launch):
    here, data = launch
    spec = load_spec(here / "spec.yaml", smoke=True)
    defaults = {f.name: f.default for f in dataclasses.fields(SweepSpec)}
    assert defaults["storage"] == "runs" and defaults["local_dir"] == "runs"  # relative as shipped
    assert spec.optuna_storage is None and spec.tracking.uri is None
    assert_absolute(spec, {"storage": here / "runs", "local_dir": here / "runs", "data_dir": data})


def test_relative_paths_in_the_sweep_file_resolve(launch):
    here, data = launch
    raw = yaml.safe_load((here / "spec.yaml").read_text())
    raw.update(
        storage="out/s",
        local_dir="out/l",
        data_dir=os.path.relpath(data, here),
        optuna_storage="sqlite:///db/optuna.db",
        tracking={"uri": "sqlite:///db/mlflow.db"},
    )
    (here / "db").mkdir()
    (here / "spec.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(here / "spec.yaml", smoke=True)
    expected = {"storage": here / "out/s", "local_dir": here / "out/l", "data_dir": data}
    assert_absolute(spec, {**expected, "optuna_storage": here / "db/optuna.db", "tracking.uri": here / "db/mlflow.db"})


def test_relative_paths_given_with_set_resolve(launch):
    here, data = launch
    (here / "db").mkdir()
    overrides = {
        "storage": "s",
        "local_dir": "../l",
        "data_dir": os.path.relpath(data, here),
        "optuna_storage": "sqlite:///db/o.db",
        "tracking.uri": "sqlite:///db/m.db",
    }
    spec = load_spec(here / "spec.yaml", overrides, smoke=True)
    expected = {"storage": here / "s", "local_dir": here.parent / "l", "data_dir": data}
    assert_absolute(spec, {**expected, "optuna_storage": here / "db/o.db", "tracking.uri": here / "db/m.db"})


def test_out_resolves_and_names_the_folder(launch, monkeypatch):
    here, data = launch
    seen = {}

    class Captured(Exception):
        pass

    def run_sweep(spec, **_):  # the spec exactly as the launcher would receive it
        seen["spec"] = spec
        raise Captured

    monkeypatch.setattr("scrutable.sweep.launcher.run_sweep", run_sweep)
    with pytest.raises(Captured):
        main(["sweep", "spec.yaml", "--smoke", "--out", "results/mine"])
    spec = seen["spec"]
    assert spec.name == "mine"
    assert_absolute(spec, {"storage": here / "results", "local_dir": here / "runs", "data_dir": data})

