"""Sweep specs: the schema of `sweeps/*.yaml`, validated once when the file is loaded.

    name: quickstart                 # the sweep's folder under `storage`
    method: pez                      # soft_prompt | pez | rlprompt
    task: sst2                       # sst2 | boolq | yelp
    data_dir: ../shared/data         # default: $SCRUTABLE_DATA_DIR, else the hub
    model: smollm2-135m
    scorer: smollm2-135m
    search:
      alpha: {low: 0.01, high: 10.0, log: true, zero: true}
      prompt_length: {values: [3, 5, 8]}
    objectives:                      # default: task/dev_metric max, interp/perplexity min
      - {metric: task/dev_metric, mode: max}
      - {metric: interp/perplexity, mode: min}
    sampler: tpe                     # tpe | nsga2 | gp | random | grid
    trials: 8
    concurrency: 2
    training: {steps: 40, batch_size: 8}   # any field of the method's config

Search dimensions: `{low, high, log}` is a float range (integer with `integer: true`),
`{values: [...]}` a choice. `zero: true` on a log range adds an explicit 0 point: Optuna
searches u uniformly over [log10(low) - w, log10(high)] with w one tenth of the range's
width, and u < log10(low) means exactly 0. The space stays continuous for TPE/GP/NSGA-II
(a 0 cannot live on a log scale), and the first trial is put at the zero point so the
unconstrained baseline is always measured.

An unknown key anywhere is an error naming the closest valid key; `--set a.b=value`
overrides are type-checked like the file.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from scrutable.config import from_mapping, suggest
from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.paths import DATA_DIR_ENV

SEARCHABLE = ("alpha", "prompt_length", "learning_rate")
ZERO_REGION = 0.1  # width of the alpha = 0 region, as a share of the log range


class Sampler(StrEnum):
    TPE = "tpe"
    NSGA2 = "nsga2"
    GP = "gp"
    RANDOM = "random"
    GRID = "grid"


class Mode(StrEnum):
    MAX = "max"
    MIN = "min"


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
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low} (use zero: true for an explicit 0)")
        if self.zero and not self.log:
            raise ValueError("zero: true needs log: true (a linear range can include 0 by itself)")

    def encoded_bounds(self) -> tuple[float, float]:
        """The range Optuna searches (log10 space for log ranges, widened for zero)."""
        assert self.low is not None and self.high is not None
        if not self.log:
            return self.low, self.high
        low, high = math.log10(self.low), math.log10(self.high)
        return (low - ZERO_REGION * (high - low) if self.zero else low), high

    def zero_point(self) -> float:
        """The middle of the zero region (an encoded value that decodes to 0.0)."""
        assert self.low is not None
        return (self.encoded_bounds()[0] + math.log10(self.low)) / 2

    def decode(self, value: Any) -> Any:
        """Optuna's value -> the config value."""
        if self.values is not None:
            return value
        if self.log:
            assert self.low is not None
            value = 0.0 if value < math.log10(self.low) else 10.0**value
        return int(round(value)) if self.integer else float(value)

    def grid(self) -> list[Any]:
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
class Objective:
    metric: str
    mode: Mode


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class ScorerResources:
    gpu: float = 0.0  # fractional on GPU clusters; the actor takes no CPU slot
    max_batch: int = 64  # sequences per forward pass
    max_wait_ms: float = 20.0  # how long a request waits for others to join its batch


@dataclass(frozen=True)
class Tracking:
    uri: str | None = None  # default: sqlite under the sweep folder; a server URI on clusters
    experiment: str | None = None  # default: the sweep's name


@dataclass(frozen=True)
class SweepSpec:
    name: str
    method: str
    task: str
    model: str
    scorer: str
    search: dict[str, Dimension]
    objectives: list[Objective] = field(
        default_factory=lambda: [Objective(keys.TASK_DEV, Mode.MAX), Objective(keys.PERPLEXITY, Mode.MIN)]
    )
    data_dir: str | None = None
    data_seed: int | None = None
    sampler: Sampler = Sampler.TPE
    trials: int = 8
    concurrency: int = 2
    resources: Resources = field(default_factory=Resources)
    scorer_resources: ScorerResources = field(default_factory=ScorerResources)
    training: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    tracking: Tracking = field(default_factory=Tracking)
    storage: str = "runs"  # the sweep folder is storage/name
    optuna_storage: str | None = None  # default: sqlite:///<sweep folder>/optuna.db
    max_failures: int = 0  # retries of a failed trial (e.g. a killed worker), from its checkpoint
    smoke: dict[str, Any] = field(default_factory=dict)  # `--smoke` overrides (tiny models, few steps)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"name {self.name!r} must be letters, digits, '_', '.', '-' (it names a folder)")
        for key in self.search:
            if key not in SEARCHABLE:
                raise ValueError(f"search.{key} is not searchable: {suggest(key, SEARCHABLE)}")
        if not self.search:
            raise ValueError("search is empty: give at least alpha or prompt_length")
        overlap = set(self.search) & set(self.training)
        if overlap:
            raise ValueError(f"{', '.join(sorted(overlap))} both searched and fixed in training: keep one")
        if len(self.objectives) < 1:
            raise ValueError("objectives is empty")
        metrics = [o.metric for o in self.objectives]
        for metric in metrics:
            if metric not in keys.ALL_NUMERIC:
                raise ValueError(f"objective metric '{metric}' is unknown: {suggest(metric, keys.ALL_NUMERIC)}")
        if self.trials < 1 or self.concurrency < 1:
            raise ValueError("trials and concurrency must be at least 1")
        if self.sampler is Sampler.GRID:
            size = math.prod(len(d.grid()) for d in self.search.values())
            if size < 1:
                raise ValueError("the grid is empty")

    @property
    def directions(self) -> list[str]:
        return [o.mode.value for o in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    def folder(self) -> Path:
        return (Path(self.storage) / self.name).resolve()

    def decode(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Optuna's sampled values -> config fields (alpha's zero region becomes 0.0).

        The grid sampler samples the decoded grid itself (`Dimension.grid`)."""
        if self.sampler is Sampler.GRID:
            return {name: sampled[name] for name in self.search}
        return {name: dim.decode(sampled[name]) for name, dim in self.search.items()}

    def fixed_config(self) -> dict[str, Any]:
        """The method config without the searched fields."""
        values = {"task": self.task, "model": self.model, "scorer": self.scorer, "seed": self.seed}
        if self.data_dir is not None:
            values["data_dir"] = str(Path(self.data_dir).expanduser().resolve())
        if self.data_seed is not None:
            values["data_seed"] = self.data_seed
        values.update(self.training)
        return values

    def trial_config(self, sampled: dict[str, Any]) -> Any:
        """The method's config for one trial, validated (unknown training keys fail here)."""
        from scrutable.trainables import get_method

        method = get_method(self.method)
        return from_mapping(
            method.config_cls, {**self.fixed_config(), **self.decode(sampled)}, where=f"sweep '{self.name}' training"
        )

    def example_point(self) -> dict[str, Any]:
        """A point inside the search space, to validate the trial config at load time."""
        if self.sampler is Sampler.GRID:
            return {name: dim.grid()[-1] for name, dim in self.search.items()}
        point = {}
        for name, dim in self.search.items():
            point[name] = dim.values[0] if dim.values is not None else dim.encoded_bounds()[1]
        return point

    def baseline_point(self) -> dict[str, Any] | None:
        """The first trial for samplers that search: alpha's zero point, middle elsewhere."""
        if self.sampler is Sampler.GRID or not any(dim.zero for dim in self.search.values()):
            return None
        point: dict[str, Any] = {}
        for name, dim in self.search.items():
            if dim.zero:
                point[name] = dim.zero_point()
            elif dim.values is not None:
                point[name] = dim.values[len(dim.values) // 2]
            else:
                low, high = dim.encoded_bounds()
                point[name] = round((low + high) / 2) if dim.integer and not dim.log else (low + high) / 2
        return point

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able mapping (written to the sweep folder as spec.yaml)."""
        import dataclasses

        def plain(value: Any) -> Any:
            if isinstance(value, StrEnum):
                return value.value
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [plain(v) for v in value]
            return value

        out: dict[str, Any] = plain(self)
        return out


def spec_from_config(value: Any) -> SweepSpec:
    """The spec a trial carries in its config: a plain mapping (`SweepSpec.to_dict`).

    A plain mapping, not the object: Tune swaps non-primitive values in `param_space` for
    object-store placeholders, which do not survive `Tuner.restore`."""
    if isinstance(value, SweepSpec):
        return value
    return from_mapping(SweepSpec, value, where="trial config")


def load_spec(path: str | Path, overrides: dict[str, str] | None = None, *, smoke: bool = False) -> SweepSpec:
    """Parse, override, validate. Every problem is one UserError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file {path} does not exist: pass a file from sweeps/")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path} is not valid YAML{where}: fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a mapping of keys (name, method, task, ...)")
    if smoke:  # before --set, so explicit overrides win over the smoke defaults
        raw = _merge(raw, raw.get("smoke") or {})
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, path)
    # Like every other command: no data_dir means $SCRUTABLE_DATA_DIR if set, else the hub.
    if not raw.get("data_dir") and os.environ.get(DATA_DIR_ENV):
        raw["data_dir"] = os.environ[DATA_DIR_ENV]
    # Relative paths mean the launching directory; trials run elsewhere, so fix them now.
    for key in ("data_dir", "storage"):
        if isinstance(raw.get(key), str):
            raw[key] = str(Path(raw[key]).expanduser().resolve())
    spec = from_mapping(SweepSpec, raw, where=path.name)
    spec.trial_config(spec.example_point())  # an unknown training key fails now, not in a trial
    if spec.data_dir is not None and not Path(spec.data_dir).is_dir():
        raise UserError(
            f"data_dir {spec.data_dir} in {path.name} does not exist: point it at ../shared/data "
            "or remove it to load from the hub"
        )
    return spec


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "search":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(raw: dict[str, Any], dotted: str, value: str, path: Path) -> None:
    """`training.steps=10` sets raw["training"]["steps"] = "10" (typed when validated)."""
    parts = dotted.split(".")
    valid_top = [f.name for f in fields(SweepSpec)]
    if parts[0] not in valid_top:
        raise UserError(f"--set {dotted}: unknown key '{parts[0]}': {suggest(parts[0], valid_top)}")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {dotted}: {part} in {path.name} is not a mapping")
    parsed = yaml.safe_load(value) if value else value  # "0.5" -> 0.5, "[3, 5]" -> list; never eval
    node[parts[-1]] = parsed
