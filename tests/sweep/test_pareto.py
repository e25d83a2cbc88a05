"""Tests for scrutable.sweep.pareto: frontier masks and hypervolumes against brute force.

Reference implementations here are deliberately naive (pairwise loops, inclusion-exclusion
over subsets, counting unit cells on an integer grid) so they are easy to trust.
Run: python -m pytest tests/sweep/test_pareto.py -q
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scrutable.sweep.pareto import default_reference, hypervolume, non_dominated

MAX, MIN = "maximize", "minimize"


# --- brute-force references --------------------------------------------------------------


def _gains(points, directions):
    signs = np.array([1.0 if d == MAX else -1.0 for d in directions])
    return np.asarray(points, dtype=float) * signs


def brute_non_dominated(points, directions):
    gains = _gains(points, directions)
    mask = []
    for p in gains:
        if np.isnan(p).any():
            mask.append(False)
            continue
        dominated = any(not np.isnan(q).any() and (q >= p).all() and (q > p).any() for q in gains)
        mask.append(not dominated)
    return np.array(mask, dtype=bool)


def inclusion_exclusion_hypervolume(points, directions, reference):
    """Union of boxes [r, p] by inclusion-exclusion over all subsets; exact, O(2^N)."""
    gains = _gains(points, directions)
    origin = _gains(np.asarray(reference, dtype=float)[None, :], directions)[0]
    boxes = [p - origin for p in gains if not np.isnan(p).any() and (p > origin).all()]
    total = 0.0
    for size in range(1, len(boxes) + 1):
        for subset in itertools.combinations(boxes, size):
            corner = np.min(subset, axis=0)  # intersection of boxes anchored at origin
            total += (-1) ** (size + 1) * float(np.prod(corner))
    return total


def grid_hypervolume(points, reference):
    """All-maximised integer points: count unit cells dominated by some point."""
    points = np.asarray(points, dtype=int)
    reference = np.asarray(reference, dtype=int)
    upper = points.max(axis=0)
    count = 0
    for cell in itertools.product(*(range(r, u) for r, u in zip(reference, upper, strict=True))):
        far_corner = np.array(cell) + 1
        count += bool((points >= far_corner).all(axis=1).any())
    return float(count)


def random_directions(rng, n_objectives):
    return [MAX if flip else MIN for flip in rng.integers(0, 2, size=n_objectives)]


# --- non_dominated -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_non_dominated_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_objectives = int(rng.integers(1, 5))
    # A coarse integer grid makes ties and shared coordinates common.
    points = rng.integers(0, 4, size=(int(rng.integers(1, 40)), n_objectives)).astype(float)
    points[rng.random(points.shape) < 0.05] = np.nan
    directions = random_directions(rng, n_objectives)
    np.testing.assert_array_equal(non_dominated(points, directions), brute_non_dominated(points, directions))


def test_non_dominated_more_rows_than_one_chunk():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(700, 2))
    points[:, 1] = -points[:, 0] + 0.1 * points[:, 1]  # a thick frontier, not a single point
    mask = non_dominated(points, [MAX, MAX])
    for i, p in enumerate(points):
        dominated = ((points >= p).all(axis=1) & (points > p).any(axis=1)).any()
        assert mask[i] == (not dominated)


def test_identical_points_are_all_kept():
    points = [[1.0, 2.0], [1.0, 2.0], [0.5, 1.0]]
    assert non_dominated(points, [MAX, MAX]).tolist() == [True, True, False]


def test_identical_dominated_points_are_all_dropped():
    points = [[0.5, 1.0], [2.0, 2.0], [0.5, 1.0]]
    assert non_dominated(points, [MAX, MAX]).tolist() == [False, True, False]


def test_nan_rows_are_never_on_the_frontier_and_dominate_nothing():
    points = [[np.nan, 100.0], [1.0, 1.0], [0.0, 0.0], [np.nan, np.nan]]
    assert non_dominated(points, [MAX, MAX]).tolist() == [False, True, False, False]


def test_all_nan_gives_an_all_false_mask():
    assert non_dominated([[np.nan, 1.0]], [MAX, MAX]).tolist() == [False]


@pytest.mark.parametrize("empty", [[], np.empty((0, 2))])
def test_no_points_gives_an_empty_mask(empty):
    mask = non_dominated(empty, [MAX, MIN])
    assert mask.shape == (0,)
    assert mask.dtype == bool


def test_mixed_directions():
    # accuracy up, perplexity down
    points = [[0.9, 80.0], [0.7, 20.0], [0.6, 90.0], [0.7, 25.0]]
    assert non_dominated(points, [MAX, MIN]).tolist() == [True, True, False, False]
    assert non_dominated(points, [MIN, MAX]).tolist() == [False, False, True, False]


def test_infinite_values_compare_as_usual():
    points = [[np.inf, 0.0], [5.0, 1.0], [1.0, 0.5]]
    assert non_dominated(points, [MAX, MAX]).tolist() == [True, True, False]


@pytest.mark.parametrize(
    ("points", "directions", "match"),
    [
        ([[1.0, 2.0]], [MAX], "1 directions"),
        ([[1.0, 2.0]], [MAX, "max"], "unknown direction"),
        ([[1.0, 2.0]], "maximize", "one entry per objective"),
        ([1.0, 2.0], [MAX, MAX], "2-D"),
    ],
)
def test_bad_arguments_raise_value_error(points, directions, match):
    with pytest.raises(ValueError, match=match):
        non_dominated(points, directions)


# --- hypervolume -------------------------------------------------------------------------


def test_hypervolume_2d_staircase_by_hand():
    # Staircase heights 3, 2, 1 over unit-wide columns.
    points = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
    assert hypervolume(points, [MAX, MAX], [0.0, 0.0]) == pytest.approx(6.0)


def test_hypervolume_2d_minimise_by_hand():
    # Same staircase mirrored: minimise both with reference (4, 4).
    points = [[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]]
    assert hypervolume(points, [MIN, MIN], [4.0, 4.0]) == pytest.approx(6.0)


def test_hypervolume_2d_mixed_directions_by_hand():
    # accuracy up from 0, perplexity down from 100: boxes 0.9 x 20 and 0.7 x 80 overlap
    # in 0.7 x 20, so 18 + 56 - 14 = 60; the dominated third point adds nothing.
    points = [[0.9, 80.0], [0.7, 20.0], [0.6, 90.0]]
    assert hypervolume(points, [MAX, MIN], [0.0, 100.0]) == pytest.approx(60.0)


def test_hypervolume_3d_by_hand():
    # Three boxes of volume 2 overlapping pairwise and jointly in the unit cube:
    # 3 * 2 - 3 * 1 + 1 = 4.
    points = [[2.0, 1.0, 1.0], [1.0, 2.0, 1.0], [1.0, 1.0, 2.0]]
    assert hypervolume(points, [MAX, MAX, MAX], [0.0, 0.0, 0.0]) == pytest.approx(4.0)


def test_hypervolume_3d_mixed_by_hand():
    # One box 2 x 3 x 4 measured from a reference that sits at (1, 5, 0) in mixed directions.
    points = [[3.0, 2.0, 4.0]]
    assert hypervolume(points, [MAX, MIN, MAX], [1.0, 5.0, 0.0]) == pytest.approx(24.0)


def test_hypervolume_1d_is_the_best_gain():
    assert hypervolume([[3.0], [5.0], [1.0]], [MIN], [6.0]) == pytest.approx(5.0)


@pytest.mark.parametrize("seed", range(30))
def test_hypervolume_matches_inclusion_exclusion(seed):
    rng = np.random.default_rng(seed)
    n_objectives = int(rng.integers(2, 5))
    points = rng.normal(size=(int(rng.integers(1, 9)), n_objectives))
    points[rng.random(points.shape) < 0.05] = np.nan
    directions = random_directions(rng, n_objectives)
    # A reference inside the cloud (drawn in gain space, then mapped back to the
    # objectives' own directions), so some points are not strictly better than it.
    reference = _gains(rng.normal(-1.0, 0.5, size=(1, n_objectives)), directions)[0]
    assert hypervolume(points, directions, reference) == pytest.approx(
        inclusion_exclusion_hypervolume(points, directions, reference), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize("seed", range(10))
def test_hypervolume_matches_grid_count_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    n_objectives = int(rng.integers(2, 4))
    points = rng.integers(0, 6, size=(30, n_objectives))
    reference = np.zeros(n_objectives, dtype=int)
    assert hypervolume(points, [MAX] * n_objectives, reference) == pytest.approx(grid_hypervolume(points, reference))


def test_flipping_an_objective_and_its_reference_keeps_the_volume():
    rng = np.random.default_rng(7)
    points = rng.normal(size=(12, 3))
    reference = np.array([-3.0, -3.0, -3.0])
    flipped = points * [1, -1, 1]
    expected = hypervolume(points, [MAX, MAX, MAX], reference)
    assert hypervolume(flipped, [MAX, MIN, MAX], reference * [1, -1, 1]) == pytest.approx(expected)


def test_points_not_strictly_better_than_the_reference_contribute_nothing():
    reference = [0.0, 0.0]
    on_boundary = [[0.0, 5.0], [5.0, 0.0]]
    behind = [[-1.0, 5.0]]
    assert hypervolume(on_boundary + behind, [MAX, MAX], reference) == 0.0
    assert hypervolume(on_boundary + [[1.0, 1.0]], [MAX, MAX], reference) == pytest.approx(1.0)


def test_hypervolume_ignores_nan_rows_and_duplicates():
    points = [[1.0, 1.0], [np.nan, 9.0], [1.0, 1.0]]
    assert hypervolume(points, [MAX, MAX], [0.0, 0.0]) == pytest.approx(1.0)


def test_hypervolume_of_nothing_is_zero():
    assert hypervolume(np.empty((0, 2)), [MAX, MIN], [0.0, 1.0]) == 0.0


@pytest.mark.parametrize(("reference", "match"), [([0.0], "one reference value"), ([0.0, np.nan], "finite")])
def test_hypervolume_bad_reference_raises(reference, match):
    with pytest.raises(ValueError, match=match):
        hypervolume([[1.0, 1.0]], [MAX, MAX], reference)


# --- default_reference -------------------------------------------------------------------


def test_default_reference_is_worst_value_nudged_by_a_tenth_of_the_range():
    points = [[0.9, 80.0], [0.7, 20.0], [0.5, 90.0], [np.nan, 1000.0]]
    reference = default_reference(points, [MAX, MIN])
    # accuracy: worst 0.5, range 0.4 -> 0.46; perplexity: worst 90, range 70 -> 97.
    # The NaN row is ignored, so its 1000 does not move the reference.
    np.testing.assert_allclose(reference, [0.46, 97.0])


def test_default_reference_puts_every_finite_point_strictly_inside():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(25, 3))
    directions = [MAX, MIN, MIN]
    reference = default_reference(points, directions)
    gains, origin = _gains(points, directions), _gains(reference[None, :], directions)[0]
    assert (gains > origin).all()
    assert hypervolume(points, directions, reference) > 0


def test_default_reference_with_a_single_point_steps_by_its_magnitude():
    reference = default_reference([[0.0, 50.0]], [MAX, MIN])
    np.testing.assert_allclose(reference, [-0.1, 55.0])
    assert hypervolume([[0.0, 50.0]], [MAX, MIN], reference) == pytest.approx(0.1 * 5.0)


def test_default_reference_needs_a_finite_row():
    with pytest.raises(ValueError, match="at least one row"):
        default_reference([[np.nan, 1.0], [np.inf, 2.0]], [MAX, MAX])
