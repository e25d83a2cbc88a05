"""Pareto frontiers and hypervolumes of multi-objective sweep results, in plain numpy.

A sweep scores every trial on K objectives, each either maximised or minimised (for
example `task/accuracy` up and `interp/perplexity` down). This module answers two
questions about the resulting (N, K) table of scores:

* Which trials are on the Pareto frontier? Trial p *dominates* trial q when p is at least
  as good as q in every objective and strictly better in at least one. The frontier
  (`non_dominated`) is the set of trials no other trial dominates. Identical trials do not
  dominate each other, so ties are all kept; a trial with a NaN score is never on it.

* How good is the frontier as a whole? The *hypervolume* (Zitzler & Thiele, 1998) of a
  set S with respect to a reference point r is the Lebesgue measure of the region that
  S dominates and that dominates r:

      HV(S, r) = volume( union over p in S of the box [r, p] )

  written for all-maximised objectives (minimised ones are negated first). Only points
  strictly better than r in every objective span a box of positive volume; the others
  contribute nothing. The reference point is the "worst acceptable" corner: give it in
  the objectives' own units and directions (for a minimised objective it is an upper
  bound, for a maximised one a lower bound). Hypervolumes are only comparable across
  sweeps that share a reference point, so fix one per study; `default_reference` derives
  one from the observed scores when nothing better is known.

For K = 2 `hypervolume` sorts once and sweeps (O(N log N)); for K >= 3 it slices along
the last objective and recurses (HSO, While et al. 2006), which is exact but grows like
O(N^(K-1)), so it is meant for frontiers of tens to a few hundred points.

Usage::

    from scrutable.sweep.pareto import default_reference, hypervolume, non_dominated

    directions = ["maximize", "minimize"]           # accuracy up, perplexity down
    scores = np.array([[0.9, 80.0], [0.7, 20.0], [0.6, 90.0]])
    non_dominated(scores, directions)               # array([ True,  True, False])
    hypervolume(scores, directions, reference=[0.0, 100.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

Direction = Literal["maximize", "minimize"]
MODE_DIRECTION: dict[str, Direction] = {"max": "maximize", "min": "minimize"}  # a spec's mode -> Optuna's word


def directions_of(modes: Sequence[str]) -> list[Direction]:
    """A spec's objective modes ("max"/"min") as directions ("maximize"/"minimize")."""
    return [MODE_DIRECTION[mode] for mode in modes]


DIRECTIONS: tuple[Direction, ...] = ("maximize", "minimize")

# Rows compared against all others per step of `non_dominated`; bounds the temporary
# (chunk, N, K) boolean arrays to a few tens of MB when N is a few thousand.
_CHUNK_ROWS = 256


def non_dominated(points: npt.ArrayLike, directions: Sequence[Direction]) -> npt.NDArray[np.bool_]:
    """Mask of the rows of `points` (N, K) that no other row Pareto-dominates.

    Identical rows are all kept (neither strictly improves on the other); rows holding a
    NaN are never on the frontier and never dominate anything. Infinite values compare as
    usual. Returns a boolean array of shape (N,); N = 0 gives an empty mask.
    """
    gains = _as_gains(points, directions)  # (N, K), larger is better everywhere
    n_points = gains.shape[0]
    valid = ~np.isnan(gains).any(axis=1)  # (N,)
    mask = np.zeros(n_points, dtype=bool)
    candidates = gains[valid]  # (M, K)
    if candidates.shape[0] == 0:
        return mask

    dominated = np.zeros(candidates.shape[0], dtype=bool)  # (M,)
    for start in range(0, candidates.shape[0], _CHUNK_ROWS):
        rows = candidates[start : start + _CHUNK_ROWS]  # (C, K)
        # other[j] dominates rows[i] when it is >= everywhere and > somewhere.
        at_least = np.all(candidates[None, :, :] >= rows[:, None, :], axis=2)  # (C, M)
        better = np.any(candidates[None, :, :] > rows[:, None, :], axis=2)  # (C, M)
        dominated[start : start + rows.shape[0]] = np.any(at_least & better, axis=1)
    mask[np.flatnonzero(valid)] = ~dominated
    return mask


def hypervolume(
    points: npt.ArrayLike,
    directions: Sequence[Direction],
    reference: npt.ArrayLike,
) -> float:
    """Volume of objective space dominated by `points` (N, K) and dominating `reference`.

    `reference` (K,) is in the objectives' own units: a lower bound for maximised
    objectives, an upper bound for minimised ones. Points not strictly better than it in
    every objective, and rows holding a NaN, contribute nothing; an empty input gives 0.
    """
    gains = _as_gains(points, directions)  # (N, K)
    reference = np.asarray(reference, dtype=float).reshape(-1)  # (K,)
    if reference.shape[0] != gains.shape[1]:
        raise ValueError(
            f"reference has {reference.shape[0]} values but points have {gains.shape[1]} "
            "objectives; give one reference value per objective"
        )
    if not np.isfinite(reference).all():
        raise ValueError(f"reference must be finite, got {reference.tolist()}")
    origin = reference * _signs(directions)  # (K,), in the all-maximised frame

    usable = ~np.isnan(gains).any(axis=1) & (gains > origin).all(axis=1)
    # Shift so the reference is the origin; only the frontier can add volume.
    boxes = gains[usable] - origin  # (M, K), all entries > 0
    if boxes.shape[0] == 0:
        return 0.0
    boxes = boxes[non_dominated(boxes, ["maximize"] * boxes.shape[1])]
    return float(_volume_from_origin(boxes))


def default_reference(
    points: npt.ArrayLike,
    directions: Sequence[Direction],
    margin: float = 0.1,
) -> npt.NDArray[np.float64]:
    """Reference point just beyond the worst observed value of each objective.

    Per objective, takes the worst value among rows that are finite in every objective
    (the minimum of a maximised objective, the maximum of a minimised one) and moves it
    `margin` times the observed range further in the worse direction. When an objective
    has a single observed value its range is zero, so the step is `margin * max(|worst|,
    1)` instead. With `margin > 0` every finite point is therefore strictly better than
    the reference and contributes to `hypervolume`, boundary points included.

    The result depends on the points, so it is for one-off summaries; to compare sweeps,
    fix a reference for the study and pass it explicitly.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    gains = _as_gains(points, directions)  # (N, K)
    finite = gains[np.isfinite(gains).all(axis=1)]  # (M, K)
    if finite.shape[0] == 0:
        raise ValueError(
            "default_reference needs at least one row that is finite in every objective; pass reference explicitly"
        )
    worst = finite.min(axis=0)  # (K,)
    spread = finite.max(axis=0) - worst  # (K,)
    step = np.where(spread > 0, margin * spread, margin * np.maximum(np.abs(worst), 1.0))
    signs = _signs(directions)
    return (worst - step) * signs  # back to the objectives' own directions


# --- helpers ---------------------------------------------------------------------------


def _signs(directions: Sequence[Direction]) -> npt.NDArray[np.float64]:
    if isinstance(directions, str):
        raise ValueError(f"directions must be a sequence with one entry per objective, got {directions!r}")
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown direction(s) {unknown}; each must be one of {list(DIRECTIONS)}")
    return np.array([1.0 if d == "maximize" else -1.0 for d in directions])


def _as_gains(points: npt.ArrayLike, directions: Sequence[Direction]) -> npt.NDArray[np.float64]:
    """Points as an (N, K) float array in which every objective is maximised."""
    signs = _signs(directions)
    array = np.asarray(points, dtype=float)
    if array.size == 0:
        array = array.reshape(0, len(signs))
    if array.ndim != 2:
        raise ValueError(f"points must be 2-D (N, K), got shape {array.shape}")
    if array.shape[1] != len(signs):
        raise ValueError(
            f"points have {array.shape[1]} objectives but {len(signs)} directions were "
            "given; give one direction per column"
        )
    return array * signs


def _volume_from_origin(boxes: npt.NDArray[np.float64]) -> float:
    """Volume of the union of boxes [0, b] over the rows b of `boxes` (M, K), all > 0."""
    n_boxes, n_objectives = boxes.shape
    if n_boxes == 0:
        return 0.0
    if n_objectives == 1:
        return float(boxes[:, 0].max())
    if n_objectives == 2:
        return _area_from_origin(boxes)
    # Slice along the last objective: between consecutive distinct heights the
    # cross-section is the (K-1)-volume of the boxes that reach at least that high.
    order = np.argsort(-boxes[:, -1], kind="stable")
    boxes = boxes[order]  # tallest first
    heights = np.append(boxes[:, -1], 0.0)  # (M + 1,)
    volume = 0.0
    for i in range(n_boxes):
        thickness = heights[i] - heights[i + 1]
        if thickness > 0:
            section = boxes[: i + 1, :-1]  # (i + 1, K - 1)
            section = section[non_dominated(section, ["maximize"] * (n_objectives - 1))]
            volume += thickness * _volume_from_origin(section)
    return volume


def _area_from_origin(boxes: npt.NDArray[np.float64]) -> float:
    """Area of the union of rectangles [0, x] x [0, y]: sort by x descending and sweep."""
    order = np.lexsort((-boxes[:, 1], -boxes[:, 0]))  # x descending, ties by y descending
    area = 0.0
    covered_height = 0.0
    for x, y in boxes[order]:
        # Everything seen so far is wider, so only the strip above covered_height is new,
        # and it spans the full width x of this rectangle.
        if y > covered_height:
            area += x * (y - covered_height)
            covered_height = y
    return area
