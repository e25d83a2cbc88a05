"""Property-based tests (hypothesis): the spec parser answers any mapping with a spec or a
`UserError` and nothing else, and the Pareto filter keeps exactly the non-dominated rows."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scrutable.errors import UserError
from scrutable.sweep.pareto import non_dominated
from scrutable.sweep.spec import SweepSpec, parse_yaml, spec_from_mapping

VALID = {
    "name": "t",
    "method": "pez",
    "task": "sst2",
    "model": "tiny-gpt2",
    "scorer": "tiny-gpt2",
    "search": {"alpha": {"low": 0.01, "high": 1.0, "log": True, "zero": True}, "prompt_length": {"values": [2, 3]}},
    "trials": 2,
    "training": {"steps": 2},
}
KEYS = [
    *VALID,
    "objectives",
    "sampler",
    "concurrency",
    "resources",
    "scorer_resources",
    "max_failures",
    "seed",
    "data_seed",
    "tracking",
    "smoke",
    "optuna_storage",
    "low",
    "high",
    "log",
    "zero",
    "values",
    "grid_points",
    "integer",
    "cpu",
    "gpu",
    "max_batch",
    "max_wait_ms",
    "metric",
    "mode",
    "alpha",
    "prompt_length",
    "learning_rate",
    "steps",
    "batch_size",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "tpe", "grid", "max", "min", "pez", "sst2", "tiny-gpt2", "task/dev_metric", "x y"]),
    st.text(max_size=8),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers(-3, 3))
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=20,
)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse(raw: object) -> None:
    try:
        spec = spec_from_mapping(raw, "random.yaml")
    except UserError as exc:
        assert "\n" not in str(exc)  # one line
    else:
        assert isinstance(spec, SweepSpec)


@SETTINGS
@given(st.dictionaries(keys, values, max_size=8))
def test_random_mappings_give_a_spec_or_a_user_error(raw):
    parse(raw)


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), values, min_size=1, max_size=3))
def test_a_valid_spec_with_random_fields_gives_a_spec_or_a_user_error(changes):
    parse({**VALID, **changes})


@SETTINGS
@given(st.sampled_from(sorted(VALID["search"]["alpha"])), values)
def test_random_search_dimensions_give_a_spec_or_a_user_error(field, value):
    parse({**VALID, "search": {"alpha": {**VALID["search"]["alpha"], field: value}}})


@SETTINGS
@given(st.text(max_size=60))
def test_random_yaml_text_gives_a_value_or_a_user_error(text):
    try:
        parse(parse_yaml(text, "random.yaml"))
    except UserError as exc:
        assert "\n" not in str(exc)


def test_the_valid_spec_parses():
    assert spec_from_mapping(VALID, "valid.yaml").trials == 2


# --- the Pareto filter ------------------------------------------------------------------

coordinates = st.one_of(st.integers(-3, 3).map(float), st.floats(-1e6, 1e6), st.just(math.nan))


@st.composite
def tables(draw):
    k = draw(st.integers(1, 3))
    n = draw(st.integers(0, 12))
    rows = draw(st.lists(st.lists(coordinates, min_size=k, max_size=k), min_size=n, max_size=n))
    directions = draw(st.lists(st.sampled_from(["maximize", "minimize"]), min_size=k, max_size=k))
    return np.array(rows, dtype=float).reshape(n, k), directions


def dominates(p, q, signs):
    p, q = p * signs, q * signs
    return bool(np.all(p >= q) and np.any(p > q))


@settings(max_examples=400, deadline=None)
@given(tables())
def test_the_frontier_is_exactly_the_non_dominated_finite_rows(table):
    points, directions = table
    signs = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    mask = non_dominated(points, directions)
    assert mask.shape == (points.shape[0],)
    valid = [i for i in range(points.shape[0]) if not np.isnan(points[i]).any()]
    for i in range(points.shape[0]):
        expected = i in valid and not any(dominates(points[j], points[i], signs) for j in valid)
        assert mask[i] == expected, (i, points, directions)


@settings(max_examples=200, deadline=None)
@given(tables(), st.randoms(use_true_random=False))
def test_the_frontier_does_not_depend_on_row_order(table, rng):
    points, directions = table
    order = list(range(points.shape[0]))
    rng.shuffle(order)
    assert np.array_equal(non_dominated(points, directions)[order], non_dominated(points[order], directions))


@settings(max_examples=200, deadline=None)
@given(tables())
def test_flipping_a_direction_is_negating_its_column(table):
    points, directions = table
    assume(points.shape[1] > 0)  # no column to flip (pytest.skip here would skip the whole property)
    flipped = ["minimize" if directions[0] == "maximize" else "maximize", *directions[1:]]
    negated = points.copy()
    negated[:, 0] = -negated[:, 0]
    assert np.array_equal(non_dominated(points, directions), non_dominated(negated, flipped))
