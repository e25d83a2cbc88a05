"""Outputs are written whole or not at all, a finished training is never lost, and a
hypervolume of 0 is not reported quietly.

`train --out` saves the prompt first and every file through a temporary file and a rename;
if the folder cannot take them (a full disk here, injected at the rename), the error is one
line that says where the trained state was saved instead. `pareto`'s files go through the
same rename: a failure leaves the previous export as it was, no half-written CSV.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
import torch

from scrutable.cli import main
from scrutable.metrics import keys
from scrutable.sweep.frontier import export_pareto, render_summary
from scrutable.sweep.results import TrialRecord
from scrutable.sweep.spec import SweepSpec, spec_from_mapping

TRAIN = [
    "train",
    "--method",
    "pez",
    "--task",
    "sst2",
    "--model",
    "tiny-gpt2",
    "--scorer",
    "tiny-gpt2",
    "--steps",
    "1",
    "--set",
    "eval_limit=2",
    "--set",
    "test_limit=2",
]


def test_train_out_writes_every_file_whole(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*TRAIN, "--out", "run"]) == 0
    written = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert written == ["card.json", "metrics.json", "prompt.pt", "state.pt"]  # no temporary file left
    prompt = torch.load(tmp_path / "run" / "prompt.pt", weights_only=True)["prompt"]
    assert prompt.shape == (5, 32) and torch.isfinite(prompt).all()
    assert "wrote prompt.pt, state.pt, card.json, metrics.json to run" in capsys.readouterr().out


def test_a_full_disk_at_train_out_keeps_the_trained_state_and_says_where(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rescue_dir = tmp_path / "tmp"
    rescue_dir.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(rescue_dir))

    def full_disk(source: object, target: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr("scrutable.paths.os.replace", full_disk)
    assert main([*TRAIN, "--out", "run"]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("scrutable: error: could not write --out run (no space left on the device")
    rescued = Path(re.search(r"saved at (\S+);", line).group(1))
    assert rescued.parent == rescue_dir
    state = torch.load(rescued, weights_only=True)
    assert state["prompt"].shape == (5, 32)
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # nothing half-written under --out


def pareto_inputs(tmp_path: Path) -> tuple[SweepSpec, list[TrialRecord]]:
    spec = spec_from_mapping(
        {
            "name": "t",
            "method": "pez",
            "task": "sst2",
            "model": "tiny-gpt2",
            "scorer": "tiny-gpt2",
            "search": {"alpha": {"low": 0.01, "high": 1.0, "log": True}},
            "storage": str(tmp_path),
        },
        "spec",
    )
    records = [
        TrialRecord(f"t{i}", "TERMINATED", {"alpha": alpha}, {keys.TASK_DEV_OBJECTIVE: dev, keys.PERPLEXITY: ppl})
        for i, (alpha, dev, ppl) in enumerate([(0.01, -0.5, 900.0), (0.1, -0.7, 300.0), (1.0, -0.9, 80.0)])
    ]
    return spec, records


def test_a_reference_no_trial_beats_gives_a_warning_naming_it(tmp_path):
    spec, records = pareto_inputs(tmp_path)
    summary = export_pareto(records, spec, tmp_path / "pareto", reference=[0.0, 10.0])  # better than every trial
    assert summary.hypervolume == 0
    (warning,) = [note for note in summary.notes if note.startswith("warning: hypervolume 0")]
    assert f"{keys.TASK_DEV_OBJECTIVE}=0, {keys.PERPLEXITY}=10, given" in warning
    assert "warning: hypervolume 0" in render_summary(summary)
    looser = export_pareto(records, spec, tmp_path / "pareto", reference=[-1.0, 1000.0])
    assert looser.hypervolume > 0 and not any(n.startswith("warning") for n in looser.notes)


def test_a_failed_pareto_write_leaves_the_previous_export_whole(tmp_path, monkeypatch):
    spec, records = pareto_inputs(tmp_path)
    out = tmp_path / "pareto"
    export_pareto(records, spec, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".csv", ".json")}

    def full_disk(source: object, target: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr("scrutable.paths.os.replace", full_disk)
    with pytest.raises(OSError):
        export_pareto(records[:1], spec, out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".csv", ".json")}
    assert after == before  # the old files, whole; no temporary file left beside them
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_damaged_reference_perplexity_cache_is_recomputed_and_rewritten_whole(tmp_path):
    from scrutable.reference_phrases import CACHE_FILE, reference_perplexities

    spec, _ = pareto_inputs(tmp_path)
    spec = spec_from_mapping({**spec.to_dict(), "data_dir": os.environ["SCRUTABLE_DATA_DIR"]}, "spec")
    first = reference_perplexities(tmp_path, spec, [3])
    cache = tmp_path / CACHE_FILE
    whole = cache.read_text()
    for damage in (whole[: len(whole) // 2], "[]", '{"key": 1, "lengths": {"x": 2}}'):
        cache.write_text(damage)
        assert reference_perplexities(tmp_path, spec, [3]) == first
        assert cache.read_text() == whole
