"""Sweep spec validation: every shipped file loads, bad specs fail with one clear line."""

from pathlib import Path

import pytest

from scrutable.errors import UserError
from scrutable.sweep.spec import load_spec

SWEEPS = sorted((Path(__file__).resolve().parents[2] / "sweeps").rglob("*.yaml"))  # results/ too


def test_the_paper_specs_and_the_quickstart_ship():
    names = {p.stem for p in SWEEPS}
    assert {"quickstart", "sst2_rlprompt", "boolq_soft_prompt", "boolq_pez", "yelp_rlprompt"} <= names


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_file_loads_and_opens_with_a_comment(path, monkeypatch):
    smoke = load_spec(path, smoke=True)  # offline: built-in tiny models only
    monkeypatch.delenv("HF_HUB_OFFLINE")  # the paper models are hub names, fine with network
    spec = load_spec(path)
    assert path.read_text().startswith("#")
    assert spec.name == path.stem and smoke.model.startswith("tiny-")
    assert [o.mode.value for o in spec.objectives] == ["max", "min"]


def write(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


BASE = """
name: t
method: pez
task: sst2
model: tiny-gpt2
scorer: tiny-gpt2
search:
  alpha: {low: 0.01, high: 1.0, log: true, zero: true}
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("trails: 3\n", "unknown key 'trails' in spec.yaml: did you mean 'trials'?"),
        ("sampler: tpee\n", "sampler must be one of tpe, nsga2, gp, random, grid"),
        ("trials: many\n", "trials must be an integer"),
        ("training: {stepz: 3}\n", "unknown key 'stepz' in sweep 't' training: did you mean 'steps'?"),
        ("objectives: [{metric: task/acc, mode: max}]\n", "did you mean 'task/dev_metric'?"),
        ("training: {alpha: 0.1}\n", "alpha both searched and fixed"),
        ("  seed: {values: [0, 1]}\ntraining: {seed: 3}\n", "seed both searched and fixed in training"),
        ("  seed: {low: 0, high: 3}\n", "search.seed must be a list of integers"),
        ("  seed: {values: [0, 1.5]}\n", "search.seed must be a list of integers"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, extra, message):
    with pytest.raises(UserError, match=message.replace("?", r"\?").replace("{", r"\{")):
        load_spec(write(tmp_path, BASE + extra))


def test_bad_dimension_and_yaml(tmp_path):
    bad_dim = BASE.replace("low: 0.01", "low: 0.0")
    with pytest.raises(UserError, match="a log range needs low > 0"):
        load_spec(write(tmp_path, bad_dim))
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_spec(write(tmp_path, BASE + "search: [\n"))
    with pytest.raises(UserError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="unknown method 'pzz'"):
        load_spec(write(tmp_path, BASE.replace("method: pez", "method: pzz")))


def test_set_overrides_are_type_checked(tmp_path):
    path = write(tmp_path, BASE)
    spec = load_spec(path, {"trials": "5", "training.steps": "7", "search.prompt_length": "{values: [2, 3]}"})
    assert spec.trials == 5 and spec.training["steps"] == 7
    assert spec.search["prompt_length"].values == [2, 3]
    with pytest.raises(UserError, match="trials must be an integer"):
        load_spec(path, {"trials": "five"})
    with pytest.raises(UserError, match="did you mean 'trials'"):
        load_spec(path, {"trial": "5"})


def test_set_overrides_win_over_smoke_defaults():
    smoke = load_spec(SWEEPS[0], {"trials": "4", "training.steps": "6"}, smoke=True)
    assert smoke.trials == 4 and smoke.training["steps"] == 6 and smoke.model.startswith("tiny-")


def replay(space, sampled):
    """Run the define-by-run function on fixed sampled values; what it returns is what the
    study holds (the real values, under their own names; tests/sweep/test_search_space.py)."""
    import optuna

    study = optuna.create_study()
    study.enqueue_trial(sampled)
    trial = study.ask()
    decoded = space.define(trial)
    assert trial.params == decoded
    return decoded


def test_searched_seed_is_the_training_seed_and_the_top_level_seed_the_samplers(tmp_path):
    text = BASE + "  seed: {values: [0, 1, 2]}\nsampler: grid\nseed: 7\n"
    spec = load_spec(write(tmp_path, text))
    assert spec.space.grid_values("seed") == [0, 1, 2] and spec.space.grid_size() == 5 * 3
    decoded = replay(spec.space, {"alpha": 0.0, "seed": 2})
    assert decoded == {"alpha": 0.0, "seed": 2}
    assert spec.trial_config(decoded).seed == 2  # the trial's own seed, not the sampler's 7
    assert spec.trial_config({"alpha": 0.0}).seed == 7  # unsearched: the spec's seed
