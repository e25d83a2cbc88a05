"""The command line itself: help for every argument, --version, one meaning per name, and the
`ui` / `pareto` / `sweep` argument errors (one line, exit 2, nothing created)."""

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scrutable import __version__
from scrutable.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def subparsers(parser):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_every_argument_has_help():
    parser = build_parser()
    missing = []
    for name, sub in {"scrutable": parser, **subparsers(parser)}.items():
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {action.dest}")
    assert not missing, missing


def test_top_level_help_names_the_three_main_commands_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for command in ("evaluate", "train", "sweep"):
        assert f"scrutable {command} " in text  # an example each


def test_version():
    done = subprocess.run([sys.executable, "-m", "scrutable.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"scrutable {__version__}"


def test_data_seed_has_one_name():
    subs = subparsers(build_parser())
    for command in ("train", "evaluate"):
        options = {o for a in subs[command]._actions for o in a.option_strings}
        assert "--data-seed" in options and "--seed" not in options


def one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("scrutable: error: "), err
    return err[0]


@pytest.fixture
def sweep_folder(tmp_path):
    folder = tmp_path / "runs" / "demo"
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump({"name": "demo", "method": "pez"}))
    return folder


def test_ui_port_out_of_range(capsys, sweep_folder):
    assert "out of range" in one_line_error(capsys, ["ui", str(sweep_folder), "--port", "99999"])


def test_ui_missing_folder_creates_nothing(capsys, tmp_path):
    missing = tmp_path / "nope"
    assert "does not exist" in one_line_error(capsys, ["ui", str(missing)])
    assert not missing.exists()


def test_ui_folder_without_store_creates_no_mlflow_db(capsys, sweep_folder):
    line = one_line_error(capsys, ["ui", str(sweep_folder)])
    assert "mlflow.db does not exist" in line
    assert sorted(p.name for p in sweep_folder.iterdir()) == ["spec.yaml"]


def test_ui_port_in_use(capsys, sweep_folder):
    import sqlite3

    with sqlite3.connect(sweep_folder / "mlflow.db") as db:  # the minimum the ui reads
        db.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT, lifecycle_stage TEXT)")
        db.execute("INSERT INTO experiments VALUES (1, 'demo', 'active')")
        for table in ("alembic_version", "runs", "metrics", "params", "tags"):
            db.execute(f"CREATE TABLE {table} (x TEXT)")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(capsys, ["ui", str(sweep_folder), "--port", str(port)])
    assert f"127.0.0.1:{port}" in line and "--port" in line


def test_ui_on_a_database_that_is_not_mlflows_is_one_line_and_leaves_it_unchanged(capsys, sweep_folder):
    import sqlite3

    store = sweep_folder / "mlflow.db"
    with sqlite3.connect(store) as db:  # someone else's database, with an `experiments` table of its own
        db.execute("CREATE TABLE experiments (experiment_id INTEGER, name TEXT, lifecycle_stage TEXT)")
        db.execute("INSERT INTO experiments VALUES (1, 'demo', 'active')")
    before = store.read_bytes()
    line = one_line_error(capsys, ["ui", str(sweep_folder), "--no-browser"])
    assert "is not an MLflow store" in line and "alembic_version" in line
    assert store.read_bytes() == before


def test_pareto_reference_must_name_every_objective(capsys, tmp_path):
    folder = tmp_path / "quickstart"
    folder.mkdir()
    (folder / "spec.yaml").write_text((REPO / "sweeps" / "quickstart.yaml").read_text())
    line = one_line_error(capsys, ["pareto", str(folder), "--reference", "task/dev_objective=0.5"])
    assert "missing interp/perplexity" in line and "unknown" not in line
    line = one_line_error(capsys, ["pareto", str(folder), "--reference", "task/dev_metric"])
    assert "METRIC=NUMBER" in line


def test_sweep_out_names_the_folder_and_the_error_names_the_flag(capsys, tmp_path):
    folder = tmp_path / "runs" / "mine"
    (folder / "tune").mkdir(parents=True)  # a sweep already ran here
    line = one_line_error(capsys, ["sweep", str(REPO / "sweeps" / "quickstart.yaml"), "--smoke", "--out", str(folder)])
    assert str(folder) in line and "already holds sweep 'mine'" in line and "--resume" in line and "--out" in line
