"""The sweep folder's one way in (`sweep/folder.py`): a folder copied from another machine
opens for reading, running trials from it checks this machine as a sweep file is checked,
and a damaged spec.yaml is one line. No Ray: the folders hold a spec as the driver writes it
(every field); the reading of Tune's files is `test_results`' and the sweep tests' subject."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from helpers import tiny_spec
from scrutable.errors import UserError
from scrutable.sweep.folder import SPEC_FILE, SweepFolder, is_sweep_folder
from scrutable.sweep.frontier import task_baseline
from scrutable.sweep.spec import spec_from_mapping


def written(root: Path, name: str = "t", **changes: object) -> Path:
    """runs/<name> holding spec.yaml with every field, as `scrutable sweep` writes it."""
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    spec = spec_from_mapping(tiny_spec(name=name, storage=str(root / "runs")), "spec").to_dict()
    (folder / SPEC_FILE).write_text(yaml.safe_dump({**spec, **changes}))
    return folder


def test_a_moved_folder_is_rerooted_where_it_now_is(tmp_path):
    folder = written(tmp_path / "cluster")
    moved = tmp_path / "laptop" / "t"
    moved.parent.mkdir()
    folder.rename(moved)

    opened = SweepFolder.open(moved)

    assert opened.spec.storage == str(moved.parent) and opened.spec.folder() == moved
    assert opened.experiment == "t" and opened.mlflow_uri == f"sqlite:///{moved / 'mlflow.db'}"


def test_a_copied_folder_whose_data_and_model_paths_are_the_clusters_opens_for_reading(tmp_path):
    folder = written(tmp_path, data_dir="/cluster/nowhere/data")

    spec = SweepFolder.open(folder).spec

    assert spec.data_dir == "/cluster/nowhere/data"  # kept as written: nothing here needs it
    baseline = task_baseline(spec)  # the frontier's baseline needs the labels, not the data
    assert baseline is not None and baseline.value == pytest.approx(-math.log(2))


def test_running_trials_from_it_checks_this_machine_as_a_sweep_file_is_checked(tmp_path):
    folder = written(tmp_path, data_dir="/cluster/nowhere/data")

    with pytest.raises(UserError, match=r"data_dir /cluster/nowhere/data in spec.yaml does not exist"):
        SweepFolder.open(folder).runnable_spec()


def test_a_spec_that_is_not_utf8_or_names_no_sweep_is_one_line(tmp_path):
    folder = written(tmp_path)
    (folder / SPEC_FILE).write_bytes(b"name: t\nmethod: \xff\n")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        SweepFolder.open(folder)
    (folder / SPEC_FILE).write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="names no sweep"):
        SweepFolder.open(folder)


def test_a_path_without_spec_yaml_is_no_sweep_folder_with_the_callers_fix(tmp_path):
    assert not is_sweep_folder(tmp_path)
    with pytest.raises(UserError, match=r"is not a sweep folder \(no spec.yaml\): pass folders made by"):
        SweepFolder.open(tmp_path, fix="pass folders made by `scrutable sweep`")
