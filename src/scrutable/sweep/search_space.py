"""The searched values: what a sweep file says (alpha with its explicit 0, prompt length,
learning rate, training seed) and what Optuna samples, mapped in one place.

    search:
      alpha: {low: 0.01, high: 10.0, log: true, zero: true}
      prompt_length: {values: [3, 5, 8]}
      learning_rate: {low: 1e-3, high: 1e-1, log: true}
      seed: {values: [0, 1, 2]}       # repeats of every setting, for means and spreads

`seed` is the method config's training seed (initialisation, batches, sampling); it must
be a list of integers, so that a grid over alpha x length x seed gives every setting the
same repeats.

`{low, high, log}` is a float range (integer with `integer: true`), `{values: [...]}` a
choice. A log range is sampled as u = log10(value) under the name `<name>_log10`, so the
study shows what it searched, and decoded here. `zero: true` on a log range adds an
explicit 0: u is searched over [log10(low) - w, log10(high)] with w one tenth of the
range's width, and u < log10(low) decodes to exactly 0. The space stays continuous for
TPE, GP and NSGA-II (a 0 cannot live on a log scale), and the first trial sits at the zero
point so the unconstrained baseline is always measured. The grid sampler samples the
decoded grid (`grid_points` values per range, plus the 0) directly under the plain name.

`SearchSpace.define` is Optuna's define-by-run function (Ray's `OptunaSearch` accepts one):
it suggests the encoded values and returns the decoded ones, which Tune merges into the
trial's config under their plain names and which the study keeps as user attributes. So
a trial's config, Tune's folders, the Optuna study, MLflow's params and the Pareto rows
all read `alpha = 0.0` for the baseline, decoded once, here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SEARCHABLE = ("alpha", "prompt_length", "learning_rate", "seed")
VALUES_ONLY = ("seed",)  # searched as a list of integers, never a range
ZERO_REGION = 0.1  # width of the alpha = 0 region, as a share of the log range
# Optuna's GridSampler enumerates every grid point up front; a sweep grid is tens to
# hundreds of points, so a thousand per range is far beyond any use and still builds fast.
MAX_GRID_POINTS = 1000
LOG_SUFFIX = "_log10"


@dataclass(frozen=True)
class Dimension:
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    zero: bool = False
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

    # --- what Optuna samples ------------------------------------------------------------

    def sampled_name(self, name: str) -> str:
        return name + LOG_SUFFIX if self.log and self.values is None else name

    def encoded_bounds(self) -> tuple[float, float]:
        """The range Optuna searches (log10 for log ranges, widened below for zero)."""
        assert self.low is not None and self.high is not None
        if not self.log:
            return self.low, self.high
        low, high = math.log10(self.low), math.log10(self.high)
        return (low - ZERO_REGION * (high - low) if self.zero else low), high

    def zero_point(self) -> float:
        """The middle of the zero region: an encoded value that decodes to 0.0."""
        assert self.low is not None
        return (self.encoded_bounds()[0] + math.log10(self.low)) / 2

    def decode(self, sampled: Any) -> Any:
        """Optuna's value -> the config value (the only decoder)."""
        if self.values is not None:
            return sampled
        if self.log:
            assert self.low is not None
            sampled = 0.0 if sampled < math.log10(self.low) else 10.0**sampled
        return int(round(sampled)) if self.integer else float(sampled)

    def ends(self) -> list[Any]:
        """Decoded values at both ends of what may be sampled: every listed value, or a
        range's low and high ends (and for `zero: true` both the 0 and the range's own low).
        Checked at load time: a trial at either end must be a valid config."""
        if self.values is not None:
            return list(self.values)
        assert self.low is not None and self.high is not None
        if self.integer and not self.log:
            return [int(self.low), int(self.high)]  # what suggest_int is given
        low, high = self.encoded_bounds()
        ends = [self.decode(low), self.decode(high)]
        if self.zero:
            ends.insert(1, self.decode(math.log10(self.low)))
        return list(dict.fromkeys(ends))

    def grid(self) -> list[Any]:
        """Decoded values for the grid sampler."""
        if self.values is not None:
            return list(self.values)
        assert self.low is not None and self.high is not None
        n = self.grid_points
        if self.log:
            points = [self.low * (self.high / self.low) ** (i / (n - 1)) for i in range(n)]
        else:
            points = [self.low + (self.high - self.low) * i / (n - 1) for i in range(n)]
        if self.integer:
            points = sorted({int(round(p)) for p in points})
        return ([0.0] if self.zero else []) + points


@dataclass(frozen=True)
class SearchSpace:
    dimensions: Mapping[str, Dimension]
    grid: bool = False  # the grid sampler: sample decoded grid values directly

    def define(self, trial: Any) -> dict[str, Any]:
        """Optuna define-by-run: suggest every dimension, return the decoded values."""
        decoded: dict[str, Any] = {}
        for name, dim in self.dimensions.items():
            if self.grid or dim.values is not None:
                decoded[name] = trial.suggest_categorical(name, self.grid_values(name))
            elif dim.log:
                decoded[name] = dim.decode(trial.suggest_float(dim.sampled_name(name), *dim.encoded_bounds()))
            elif dim.integer:
                low, high = dim.encoded_bounds()
                decoded[name] = trial.suggest_int(name, int(low), int(high))
            else:
                decoded[name] = trial.suggest_float(name, *dim.encoded_bounds())
            trial.set_user_attr(name, decoded[name])
        return decoded

    def grid_values(self, name: str) -> list[Any]:
        return self.dimensions[name].grid()

    def grid_size(self) -> int:
        return math.prod(len(d.grid()) for d in self.dimensions.values())

    def decoded(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The searched values of a trial's config (already decoded by `define`)."""
        return {name: config[name] for name in self.dimensions if name in config}

    def baseline_point(self) -> dict[str, Any] | None:
        """The first trial for samplers that search (sampled names): alpha's zero point, the
        middle elsewhere. None for the grid, whose grid holds the 0 already."""
        if self.grid or not any(dim.zero for dim in self.dimensions.values()):
            return None
        point: dict[str, Any] = {}
        for name, dim in self.dimensions.items():
            if dim.zero:
                point[dim.sampled_name(name)] = dim.zero_point()
            elif dim.values is not None:
                point[name] = dim.values[len(dim.values) // 2]
            else:
                low, high = dim.encoded_bounds()
                middle = (low + high) / 2
                point[dim.sampled_name(name)] = round(middle) if dim.integer and not dim.log else middle
        return point

    def example_point(self) -> dict[str, Any]:
        """Decoded values inside the space, to validate a trial config at load time."""
        point = {}
        for name, dim in self.dimensions.items():
            point[name] = dim.grid()[-1] if self.grid or dim.values is not None else dim.decode(dim.encoded_bounds()[1])
        return point
