"""Which trials a sweep runs (`sweep/search_space.py`, the searcher in `sweep/launcher.py`):
alpha = 0 once per length and outside the study, a space-filling start, real values in
Optuna, no repeated configuration, a derived seed per trial. The searcher is driven by hand
(suggest / report / complete), as Tune drives it, without starting Ray."""

import math
from pathlib import Path

import optuna
import pytest

from scrutable.sweep.launcher import DUPLICATE_ATTR, make_searcher
from scrutable.sweep.search_space import Dimension, SearchSpace, trial_seed
from scrutable.sweep.spec import load_spec

QUICKSTART = Path(__file__).resolve().parents[2] / "sweeps" / "quickstart.yaml"
ALPHA = Dimension(low=0.03, high=30.0, log=True, zero=True)


def quickstart(tmp_path, **overrides):
    values = {"storage": str(tmp_path), "trials": "6", **overrides}
    return load_spec(QUICKSTART, {k: str(v) for k, v in values.items()}, smoke=True)


def drive(searcher, n, result=None):
    """Ask for `n` trials as Tune does; complete each with `result(config)` (None: leave running)."""
    configs = {}
    for i in range(n):
        trial_id = f"t{i}"
        config = searcher.suggest(trial_id)
        if config == searcher.FINISHED:
            break
        configs[trial_id] = config
        if result is not None:
            searcher.on_trial_complete(trial_id, result=result(config))
    return configs


def objectives(config):
    alpha = config["alpha"]
    return {"task/dev_objective": -0.6 - 0.01 * alpha, "interp/perplexity": 1e5 / (1 + alpha)}


def searcher_for(spec, folder):
    folder.mkdir(parents=True, exist_ok=True)  # run_sweep creates it before the searcher
    return make_searcher(spec, folder)


def load(spec, tmp_path):
    return optuna.load_study(study_name=spec.name, storage=f"sqlite:///{tmp_path / spec.name / 'optuna.db'}")


# --- the space ------------------------------------------------------------------------------


def test_optuna_holds_the_real_alpha_on_a_log_scale():
    space = SearchSpace({"alpha": ALPHA, "prompt_length": Dimension(values=[3, 6])})
    study = optuna.create_study()
    study.enqueue_trial({"alpha": 0.5, "prompt_length": 6})
    trial = study.ask()
    assert space.define(trial) == {"alpha": 0.5, "prompt_length": 6} == trial.params
    distribution = trial.distributions["alpha"]
    assert isinstance(distribution, optuna.distributions.FloatDistribution)
    assert distribution.log and (distribution.low, distribution.high) == (0.03, 30.0)
    sampled = [space.define(study.ask())["alpha"] for _ in range(50)]  # the sampler's own draws
    assert all(0.03 <= a <= 30.0 for a in sampled) and min(sampled) < 0.3 < 3 < max(sampled)


def test_optuna_refuses_zero_in_a_log_distribution():
    """Why the baselines run outside the study (search_space.py, step 1)."""
    study = optuna.create_study()
    study.enqueue_trial({"alpha": 0.0})
    with pytest.raises(ValueError, match="invalid value for the case log=True"):
        study.ask().suggest_float("alpha", 0.03, 30.0, log=True)


def test_baselines_once_per_length_and_the_grid_keeps_its_zero():
    space = SearchSpace({"alpha": ALPHA, "prompt_length": Dimension(values=[3, 6])})
    assert space.baseline_configs() == [{"alpha": 0.0, "prompt_length": 3}, {"alpha": 0.0, "prompt_length": 6}]
    repeats = SearchSpace({"alpha": ALPHA, "seed": Dimension(values=[0, 1]), "learning_rate": LR})
    assert [(c["alpha"], c["seed"]) for c in repeats.baseline_configs()] == [(0.0, 0), (0.0, 1)]
    assert repeats.baseline_configs()[0]["learning_rate"] == pytest.approx(0.01)  # the log range's middle
    grid = SearchSpace({"alpha": ALPHA}, grid=True)
    assert grid.baseline_configs() == [] and grid.grid_values("alpha")[0] == 0.0
    assert SearchSpace({"alpha": Dimension(low=0.1, high=1.0, log=True)}).baseline_configs() == []


LR = Dimension(low=1e-3, high=1e-1, log=True)


@pytest.mark.parametrize("n", [1, 2, 4, 5, 10, 17])
def test_start_design_is_a_latin_hypercube_with_alpha_ascending(n):
    lengths = [2, 3, 5]
    space = SearchSpace({"alpha": ALPHA, "prompt_length": Dimension(values=lengths), "learning_rate": LR})
    design = space.start_design(n)
    assert len(design) == n
    log_alpha = [(math.log10(p["alpha"]) - math.log10(0.03)) / 3 for p in design]
    assert log_alpha == pytest.approx([(i + 0.5) / n for i in range(n)])  # one per stratum, in order
    log_lr = sorted((math.log10(p["learning_rate"]) + 3) / 2 for p in design)
    assert log_lr == pytest.approx([(i + 0.5) / n for i in range(n)])  # a permutation of the strata
    counts = [sum(p["prompt_length"] == length for p in design) for length in lengths]
    assert max(counts) - min(counts) <= 1  # every length its share
    assert len({space.key(p) for p in design}) == n
    small = SearchSpace({"alpha": Dimension(values=[0.1, 1.0]), "prompt_length": Dimension(values=[3])})
    assert len(small.start_design(n)) == min(n, 2)  # no point repeated


def test_six_quickstart_trials_see_small_middle_and_large_alphas_at_both_lengths():
    space = SearchSpace({"alpha": ALPHA, "prompt_length": Dimension(values=[3, 6])})
    design = space.start_design(4)
    alphas = [p["alpha"] for p in design]
    assert alphas[0] < 0.1 and 0.3 < alphas[1] < 1 and 1 < alphas[2] < 3 and alphas[3] > 10
    for length in (3, 6):  # each length gets a low and a high alpha, not one half of the range
        mine = sorted(p["alpha"] for p in design if p["prompt_length"] == length)
        assert mine[0] < 1 < mine[-1]


def test_trial_seeds_are_derived_deterministic_and_distinct():
    seeds = [trial_seed(0, i) for i in range(200)]
    assert seeds == [trial_seed(0, i) for i in range(200)] and len(set(seeds)) == 200
    assert all(0 <= s < 2**31 for s in seeds) and trial_seed(1, 0) not in seeds[:5]


def test_key_rounds_floats_and_ignores_a_derived_seed():
    space = SearchSpace({"alpha": ALPHA}, derive_seed=True)
    assert space.key({"alpha": 0.30001, "seed": 1}) == space.key({"alpha": 0.3, "seed": 2})
    assert space.key({"alpha": 0.301}) != space.key({"alpha": 0.3}) and space.names == ["alpha", "seed"]
    assert space.decoded({"alpha": 0.3, "seed": 5, "other": 1}) == {"alpha": 0.3, "seed": 5}


# --- the searcher, driven by hand ------------------------------------------------------------


def test_quickstart_runs_baselines_then_a_spread_with_distinct_configs_and_seeds(tmp_path):
    spec = quickstart(tmp_path)
    configs = drive(searcher_for(spec, tmp_path / spec.name), 6, objectives)
    rows = list(configs.values())
    assert [(c["alpha"], c["prompt_length"]) for c in rows[:2]] == [(0.0, 3), (0.0, 6)]  # enqueued first
    alphas = sorted(c["alpha"] for c in rows[2:])
    # One per quarter of log10 alpha over the quickstart's [0.1, 30]: below 0.42, above 7.2, two between.
    assert alphas[0] < 0.42 and alphas[-1] > 7.2 and all(0.41 < a < 7.3 for a in alphas[1:-1])
    assert len({(c["alpha"], c["prompt_length"], c["seed"]) for c in rows}) == 6
    assert [c["seed"] for c in rows] == [trial_seed(spec.seed, i) for i in range(6)]  # distinct inits

    study = load(spec, tmp_path)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and all("alpha" in t.params and "alpha_log10" not in t.params for t in done)
    assert all(t.params["alpha"] > 0 and t.distributions["alpha"].log for t in done)  # no made-up 0
    assert sorted(t.user_attrs["seed"] for t in done) == sorted(c["seed"] for c in rows[2:])
    baselines = {k: v for k, v in study.user_attrs.items() if k.startswith("baseline")}
    assert sorted(v["prompt_length"] for v in baselines.values()) == [3, 6]
    assert all(v["alpha"] == 0.0 and v["task/dev_objective"] == pytest.approx(-0.6) for v in baselines.values())


def test_a_resumed_study_is_not_enqueued_again(tmp_path):
    spec = quickstart(tmp_path, trials=8)
    drive(searcher_for(spec, tmp_path / spec.name), 3, objectives)
    waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in load(spec, tmp_path).trials)
    searcher_for(spec, tmp_path / spec.name)  # what --resume builds before restoring its state
    assert waiting == 5 and sum(t.state == optuna.trial.TrialState.WAITING for t in load(spec, tmp_path).trials) == 5


def test_a_repeated_configuration_is_never_started_and_a_used_up_space_ends(tmp_path):
    overrides = {"search.alpha": "{values: [0.1, 1.0]}", "search.prompt_length": "{values: [3]}", "sampler": "random"}
    spec = quickstart(tmp_path, **overrides)
    searcher = searcher_for(spec, tmp_path / spec.name)
    configs = drive(searcher, 4)  # left running: a running trial counts as taken too
    assert sorted(c["alpha"] for c in configs.values()) == [0.1, 1.0]  # the third ask found nothing new
    study = load(spec, tmp_path)
    skipped = [t for t in study.trials if DUPLICATE_ATTR in t.user_attrs]
    assert skipped and all(t.state == optuna.trial.TrialState.PRUNED for t in skipped)


def test_a_searched_seed_gives_repeats_of_one_setting_and_no_derived_seed(tmp_path):
    overrides = {
        "search.alpha": "{values: [0.1]}",
        "search.prompt_length": "{values: [3]}",
        "search.seed": "{values: [0, 1]}",
        "sampler": "random",
    }
    spec = quickstart(tmp_path, **overrides)
    configs = drive(searcher_for(spec, tmp_path / spec.name), 3, objectives)
    assert sorted(c["seed"] for c in configs.values()) == [0, 1]  # the seed changed, then the space ended
    fixed = quickstart(tmp_path / "fixed", **{"training.seed": 5})
    assert not fixed.space.derive_seed and "seed" not in drive(searcher_for(fixed, tmp_path / "f"), 1)["t0"]


def test_each_evaluation_is_an_intermediate_value_at_its_step(tmp_path):
    spec = quickstart(tmp_path, trials=3)
    searcher = searcher_for(spec, tmp_path / spec.name)
    configs = drive(searcher, 3)
    (trial_id,) = [t for t, c in configs.items() if c["alpha"] > 0]
    searcher.on_trial_result(trial_id, {"progress/step": 1, "training_iteration": 1})  # a step report: ignored
    for step, value in [(8, -0.7), (16, -0.65)]:
        searcher.on_trial_result(trial_id, {"task/dev_objective": value, "train/step": step})
    searcher.on_trial_result("t0", {"task/dev_objective": -0.69, "train/step": 8})  # a baseline: not in the study
    searcher.on_trial_complete(trial_id, result={"task/dev_objective": -0.65, "interp/perplexity": 1e4})
    (trial,) = [t for t in load(spec, tmp_path).trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert trial.intermediate_values == {8: -0.7, 16: -0.65} and trial.values == [-0.65, 1e4]
