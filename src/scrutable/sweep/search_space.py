"""The searched values: what a sweep file says (alpha with its explicit 0, prompt length,
learning rate, training seed), what Optuna holds, and which trials a sweep runs, in one place.

    search:
      alpha: {low: 0.03, high: 30.0, log: true, zero: true}
      prompt_length: {values: [3, 6]}
      learning_rate: {low: 1e-3, high: 1e-1, log: true}
      seed: {values: [0, 1, 2]}       # repeats of every setting, for means and spreads

`{low, high, log}` is a float range (integer with `integer: true`), `{values: [...]}` a
choice. Optuna holds the real values under their own names: `alpha` is a
`FloatDistribution(low, high, log=True)`, a list is a categorical, so the study, its
importance and parallel-coordinate plots, every trial config, MLflow and the Pareto files
read the same numbers. `seed` is the method config's training seed; it must be a list of
integers, so that a grid over alpha x length x seed gives every setting the same repeats.

Which trials a sweep runs, in order (`sweep/launcher.py` hands them to Tune):

1. Baselines. `zero: true` on alpha asks for the unconstrained alpha = 0, run once per
   prompt length (and per seed when the seed is searched; other ranges at their middle):
   `baseline_configs`. These are fixed configs the searcher hands out before it asks
   Optuna; they are Tune trials, MLflow runs and Pareto rows like any other, but not trials
   of the Optuna study. Why: Optuna 5 cannot hold 0 in a log distribution
   (`enqueue_trial({"alpha": 0.0})` fails with "`0.0` is invalid value for the case
   log=True"), a made-up point below the range would be plotted as a value, and a
   baseline trial without `alpha` (or with a separate categorical) would drop alpha from
   the joint model of multivariate TPE, GP and NSGA-II, which model only the parameters
   that every trial has. The grid sampler keeps 0 among alpha's grid values instead (a
   categorical holds it).
2. A space-filling start: the first searched trials are `start_design(n)`, enqueued in the
   study (`study.enqueue_trial`): a Latin hypercube over the ranges (log10 scale for log
   ranges), alpha's column in ascending strata and every other column ranked from a
   golden-ratio sequence, so each length sees alphas across the whole range. They take
   the place of the samplers' random start-up (TPE's and GP's first 10 trials, NSGA-II's
   first generation), so a 6-trial sweep sees small, middle and large alphas.
3. Then the sampler. `key` names a configuration (floats to `KEY_DIGITS` significant
   digits); the searcher never starts a configuration that a trial already has (finished,
   running or waiting): it asks the sampler again, and a searched seed is one of the values
   it changes.
4. Seeds. Unless the spec searches `seed` or fixes `training.seed`, each trial's training
   seed (initialisation, batches) is `trial_seed(sweep seed, i)` for the i-th trial handed
   out: prompts of one setting differ between trials, and the same spec gives the same
   seeds. It is written into the trial's config (so a resumed trial keeps it), MLflow's
   params, the Pareto files and the study's user attribute `seed`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SEARCHABLE = ("alpha", "prompt_length", "learning_rate", "seed")
VALUES_ONLY = ("seed",)  # searched as a list of integers, never a range
SEED = "seed"  # the method config's training seed
# Configurations closer than this many significant digits in every value are the same
# trial: PEZ projects onto tokens, so alphas 0.1% apart end on the same prompt.
KEY_DIGITS = 4
GOLDEN = (math.sqrt(5) - 1) / 2  # the start design's low-discrepancy step
# Optuna's GridSampler enumerates every grid point up front; a sweep grid is tens to
# hundreds of points, so a thousand per range is far beyond any use and still builds fast.
MAX_GRID_POINTS = 1000


@dataclass(frozen=True)
class Dimension:
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    zero: bool = False  # alpha: add the alpha = 0 baseline trials (step 1 above)
    values: list[Any] | None = None
    grid_points: int = 4  # values per range for the grid sampler

    def __post_init__(self) -> None:
        if self.values is not None:
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError("a dimension is either `values: [...]` or `low`/`high`, not both")
            return
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a range needs low < high, got low={self.low}, high={self.high}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"a range needs finite bounds, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low} (use zero: true for an explicit 0)")
        if self.zero and not self.log:
            raise ValueError("zero: true needs log: true (a linear range can include 0 by itself)")
        if not 2 <= self.grid_points <= MAX_GRID_POINTS:
            raise ValueError(f"grid_points must be at least 2 and at most {MAX_GRID_POINTS}, got {self.grid_points}")

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask Optuna for this dimension's real value under its own name."""
        if self.values is not None:
            return trial.suggest_categorical(name, self.values)
        assert self.low is not None and self.high is not None
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def at(self, share: float) -> Any:
        """The value `share` (0 to 1) of the way through the range, on the log scale for a
        log range; for a list, the value whose equal slice of [0, 1) holds `share`."""
        if self.values is not None:
            return self.values[min(int(share * len(self.values)), len(self.values) - 1)]
        assert self.low is not None and self.high is not None
        span = self.high / self.low if self.log else self.high - self.low
        value = self.low * span**share if self.log else self.low + span * share
        value = min(max(value, self.low), self.high)  # float rounding at the ends
        return int(round(value)) if self.integer else float(value)

    def ends(self) -> list[Any]:
        """Values at both ends of what a trial may get: every listed value, or a range's low
        and high ends (and for `zero: true` the baselines' 0 first). Checked at load time: a
        trial at either end must be a valid config."""
        if self.values is not None:
            return list(self.values)
        assert self.low is not None and self.high is not None
        ends = [int(self.low), int(self.high)] if self.integer else [float(self.low), float(self.high)]
        return ([0.0] if self.zero else []) + ends

    def grid(self) -> list[Any]:
        """The grid sampler's values: `grid_points` spread over the range, plus the 0."""
        if self.values is not None:
            return list(self.values)
        points = [self.at(i / (self.grid_points - 1)) for i in range(self.grid_points)]
        if self.integer:
            points = sorted(set(points))
        return ([0.0] if self.zero else []) + points


@dataclass(frozen=True)
class SearchSpace:
    dimensions: Mapping[str, Dimension]
    grid: bool = False  # the grid sampler: every dimension a categorical of its grid values
    derive_seed: bool = False  # each trial's training seed from `trial_seed` (step 4 above)

    def define(self, trial: Any) -> dict[str, Any]:
        """Optuna define-by-run: suggest every dimension, return the values (real, as run)."""
        return {
            name: trial.suggest_categorical(name, dim.grid()) if self.grid else dim.suggest(trial, name)
            for name, dim in self.dimensions.items()
        }

    def grid_values(self, name: str) -> list[Any]:
        return self.dimensions[name].grid()

    def grid_size(self) -> int:
        return math.prod(len(d.grid()) for d in self.dimensions.values())

    @property
    def names(self) -> list[str]:
        """The config values a trial gets from the searcher: the searched ones, and the
        training seed where it is derived per trial."""
        return list(self.dimensions) + ([SEED] if self.derive_seed and SEED not in self.dimensions else [])

    def decoded(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The values of a trial's config that the searcher set (`names`)."""
        return {name: config[name] for name in self.names if name in config}

    def key(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """What makes two trials the same configuration: the searched values, floats to
        `KEY_DIGITS` significant digits (a derived seed is not part of it)."""
        return tuple(_rounded(values.get(name)) for name in self.dimensions)

    def baseline_configs(self) -> list[dict[str, Any]]:
        """The alpha = 0 trials (step 1 above): one per prompt length (per listed value of
        every listed dimension), other ranges at their middle. None for the grid, whose
        alpha grid holds the 0 already."""
        zero = [name for name, dim in self.dimensions.items() if dim.zero]
        if self.grid or not zero:
            return []
        choices: dict[str, list[Any]] = {}
        for name, dim in self.dimensions.items():
            if dim.zero:
                choices[name] = [0.0]
            elif dim.values is not None or (name == "prompt_length" and dim.integer):
                choices[name] = dim.grid()
            else:
                choices[name] = [dim.at(0.5)]
        names = list(choices)
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices.values())]

    def start_design(self, n: int) -> list[dict[str, Any]]:
        """`n` points spread over the space (step 2 above): a Latin hypercube with one point
        per 1/n-stratum of every range, at the stratum's middle. The first searched name
        (alpha) takes the strata in ascending order; column j takes the rank of
        frac(i * j * GOLDEN), so pairs of columns are spread too and every listed value gets
        its share of the points; a point that repeats another's values (a small list) is left
        out. Empty for the grid sampler."""
        if self.grid or n < 1:
            return []
        names = [name for name in SEARCHABLE if name in self.dimensions]
        columns = [list(range(n))]
        for j in range(1, len(names)):
            step = (j * GOLDEN) % 1.0

            def position(i: int, step: float = step) -> tuple[float, int]:
                return ((i * step) % 1.0, i)

            order = sorted(range(n), key=position)
            ranks = [0] * n
            for rank, i in enumerate(order):
                ranks[i] = rank
            columns.append(ranks)
        design: dict[tuple[Any, ...], dict[str, Any]] = {}
        for i in range(n):
            shares = {name: (column[i] + 0.5) / n for name, column in zip(names, columns, strict=True)}
            point = {name: self.dimensions[name].at(share) for name, share in shares.items()}
            design.setdefault(self.key(point), point)
        return list(design.values())

    def example_point(self) -> dict[str, Any]:
        """Values inside the space, to validate a trial config at load time."""
        return {name: dim.grid()[-1] for name, dim in self.dimensions.items()}


def trial_seed(sweep_seed: int, index: int) -> int:
    """The training seed of a sweep's `index`-th trial (0-based, in the order the searcher
    hands trials out), in [0, 2**31): a hash, so trials' generators are unrelated and a
    sweep with another seed gets other seeds, not shifted ones."""
    digest = hashlib.sha256(f"scrutable-trial-seed/{sweep_seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def _rounded(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return float(f"{value:.{KEY_DIGITS - 1}e}")
    return value
