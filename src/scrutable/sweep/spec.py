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
    objectives:                      # default: task/dev_objective max, interp/perplexity min
      - {metric: task/dev_objective, mode: max}
      - {metric: interp/perplexity, mode: min}
    sampler: tpe                     # tpe | nsga2 | gp | random | grid
    trials: 8
    concurrency: 2
    training: {steps: 40, batch_size: 8}   # any field of the method's config
    storage: runs                    # or s3://bucket/sweeps, gs://..., a shared mount (clusters)
    local_dir: runs                  # the driver's files when storage is a URI
    seed: 0                          # the sampler's seed; trials' training seeds derive from it

Searching `seed: {values: [0, 1, 2]}` sets each trial's training seed (the method
config's `seed` field) and leaves the top-level `seed` to the sampler: a grid over
alpha x prompt_length x seed repeats every setting once per seed. A seed both searched
and fixed in `training` is refused. Neither searched nor fixed, each trial gets its own
training seed derived from the top-level one (`search_space.trial_seed`).

Search dimensions and how they are sampled and decoded: `sweep/search_space.py`.
The default objectives are the dev objective (a continuous score: mean log-probability of
the correct answer, or Yelp's joint score; `metrics/keys.py`) and the perplexity; the dev
accuracy is reported next to them.

An unknown key anywhere is an error naming the closest valid key; `--set a.b=value`
overrides are type-checked like the file. What the file names is then checked against the
world outside it (method, task and models resolve, the search's ends fit the model, Optuna's
database opens): `sweep/spec_checks.py`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml

from scrutable.config import from_mapping, suggest
from scrutable.errors import UserError
from scrutable.metrics import keys
from scrutable.paths import DATA_DIR_ENV
from scrutable.prompts import max_prompt_length as max_prompt_length  # its home; kept importable from here
from scrutable.sweep.search_space import SEARCHABLE, VALUES_ONLY, Dimension, SearchSpace
from scrutable.sweep.storage import experiment_location, is_uri, normalise

MAX_NAME_LENGTH = 100  # leaves room for Tune's trial folder names (name + params) under 255 bytes
SEED_LIMIT = 2**32  # Optuna's samplers seed NumPy, which takes 0 <= seed < 2**32
MAX_GRID_SIZE = 100_000  # Optuna's GridSampler lists every point; 1e5 is far beyond any sweep's budget


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
class Objective:
    metric: str
    mode: Mode


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cpu) and self.cpu > 0):
            raise ValueError(f"resources.cpu must be a positive number of cores, got {self.cpu}")
        if not (math.isfinite(self.gpu) and self.gpu >= 0):
            raise ValueError(f"resources.gpu must be >= 0, got {self.gpu}")


@dataclass(frozen=True)
class ScorerResources:
    gpu: float = 0.0  # fractional on GPU clusters; > 0 runs the scorer on the GPU Ray reserves
    # CPU slots reserved and torch threads used; 0 never delays a trial (one thread, enough to feed a GPU).
    cpu: float = 0.0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the scorer's weights; NLLs stay float32
    max_batch: int = 64  # sequences per forward pass
    # Longest a request waits for other trials' requests to join its batch; it never waits
    # longer than its loop leaves it unresolved (its slack), so a blocking call never waits.
    max_wait_ms: float = 2000.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gpu) and self.gpu >= 0):
            raise ValueError(f"scorer_resources.gpu must be >= 0, got {self.gpu}")
        if not (math.isfinite(self.cpu) and self.cpu >= 0):
            raise ValueError(f"scorer_resources.cpu must be >= 0, got {self.cpu}")
        if self.max_batch < 1:
            raise ValueError(f"scorer_resources.max_batch must be at least 1, got {self.max_batch}")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise ValueError(f"scorer_resources.max_wait_ms must be >= 0, got {self.max_wait_ms}")


@dataclass(frozen=True)
class Tracking:
    uri: str | None = None  # default: sqlite under the sweep folder; a server URI on clusters
    experiment: str | None = None  # default: the sweep's name

    def __post_init__(self) -> None:
        # MLflow places an experiment's artifacts under a folder named after it: a name that is
        # a path ("..", "a/b") would put them outside the sweep folder.
        if self.experiment is not None and (
            not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_. -]*", self.experiment) or ".." in self.experiment
        ):
            raise ValueError(
                f"tracking.experiment {self.experiment!r} must be letters, digits, spaces, '_', '.', '-' "
                "(no '/' or '..': it names a folder)"
            )


@dataclass(frozen=True)
class SweepSpec:
    name: str
    method: str
    task: str
    model: str
    scorer: str
    search: dict[str, Dimension]
    objectives: list[Objective] = field(
        default_factory=lambda: [Objective(keys.TASK_DEV_OBJECTIVE, Mode.MAX), Objective(keys.PERPLEXITY, Mode.MIN)]
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
    storage: str = "runs"  # a path (the sweep folder is storage/name) or a URI for Tune (see sweep/storage.py)
    local_dir: str = "runs"  # the driver's files (MLflow, Optuna, pareto/) when storage is a URI
    optuna_storage: str | None = None  # default: sqlite:///<sweep folder>/optuna.db
    # Retries of a failed trial from its last checkpoint: at least one by default, so a killed
    # trial worker (OOM killer, a lost node) continues instead of failing for good.
    max_failures: int = 1
    smoke: dict[str, Any] = field(default_factory=dict)  # `--smoke` overrides (tiny models, few steps)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ValueError(f"name {self.name!r} must be letters, digits, '_', '.', '-' (it names a folder)")
        if len(self.name) > MAX_NAME_LENGTH:
            raise ValueError(
                f"name is {len(self.name)} characters, more than {MAX_NAME_LENGTH}: shorten it (it names the sweep "
                "folder, and Tune's trial folders and checkpoint paths under it must stay within the 255-byte "
                "name and 4096-byte path limits)"
            )
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed must be in [0, 2**32) (Optuna's and NumPy's seeds), got {self.seed}")
        for key in self.search:
            if key not in SEARCHABLE:
                raise ValueError(f"search.{key} is not searchable: {suggest(key, SEARCHABLE)}")
        if not self.search:
            raise ValueError("search is empty: give at least alpha or prompt_length")
        for name in VALUES_ONLY:
            values = self.search[name].values if name in self.search else []
            if values is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise ValueError(f"search.{name} must be a list of integers, e.g. {{values: [0, 1, 2]}}")
        overlap = set(self.search) & set(self.training)
        if overlap:
            raise ValueError(f"{', '.join(sorted(overlap))} both searched and fixed in training: keep one")
        if len(self.objectives) < 1:
            raise ValueError("objectives is empty")
        metrics = [o.metric for o in self.objectives]
        for metric in metrics:
            if metric not in keys.OBJECTIVE_CHOICES:
                raise ValueError(f"objective metric '{metric}' is unknown: {suggest(metric, keys.OBJECTIVE_CHOICES)}")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives name a metric twice: {metrics}")
        if self.trials < 1 or self.concurrency < 1:
            raise ValueError("trials and concurrency must be at least 1")
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0 (retries per trial), got {self.max_failures}")
        if self.sampler is Sampler.GRID and self.space.grid_size() < 1:
            raise ValueError("the grid is empty")
        if self.sampler is Sampler.GRID and self.space.grid_size() > MAX_GRID_SIZE:
            raise ValueError(
                f"the grid has {self.space.grid_size()} points, more than {MAX_GRID_SIZE}: lower grid_points "
                "or list fewer values"
            )

    @property
    def directions(self) -> list[str]:
        return [o.mode.value for o in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    def folder(self) -> Path:
        """The driver's sweep folder: storage/name, or local_dir/name when storage is a URI."""
        return (Path(self.local_dir if is_uri(self.storage) else self.storage) / self.name).resolve()

    def tune_location(self) -> str:
        """Tune's experiment folder: <storage>/<name>/tune, a path or a URI."""
        return experiment_location(self.storage, self.name)

    @property
    def space(self) -> SearchSpace:
        # A per-trial training seed unless the spec searches the seed or fixes training.seed.
        derive = "seed" not in self.search and "seed" not in self.training
        return SearchSpace(self.search, grid=self.sampler is Sampler.GRID, derive_seed=derive)

    def fixed_config(self) -> dict[str, Any]:
        """The method config without the searched fields."""
        values = {"task": self.task, "model": self.model, "scorer": self.scorer, "seed": self.seed}
        if self.data_dir is not None:
            values["data_dir"] = str(Path(self.data_dir).expanduser().resolve())
        if self.data_seed is not None:
            values["data_seed"] = self.data_seed
        values.update(self.training)
        return values

    def trial_config(self, searched: dict[str, Any]) -> Any:
        """The method's config for one trial from the searched values (decoded), validated
        (an unknown training key fails here)."""
        from scrutable.trainables import get_method

        method = get_method(self.method)
        return from_mapping(
            method.config_cls, {**self.fixed_config(), **searched}, where=f"sweep '{self.name}' training"
        )

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
    """The spec a trial is given (`tune.with_parameters`): a plain mapping (`SweepSpec.to_dict`)."""
    if isinstance(value, SweepSpec):
        return value
    return from_mapping(SweepSpec, value, where="trial config")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, list | dict):
            continue  # an unhashable key; the base constructor reports it
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# A sweep file is a few dozen nodes; aliases that expand past this are a "billion laughs"
# bomb (484 bytes became a 10.6 MB spec.yaml when written back out expanded).
MAX_EXPANDED_NODES = 10_000


def _expanded_size(node: yaml.Node, memo: dict[int, int], visiting: set[int]) -> int:
    """Nodes in the document once every alias is expanded (each shared node counted per use)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in visiting:
        raise UserError("an anchor refers to itself (a recursive alias): write the values out")
    visiting.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo, visiting) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo, visiting) + _expanded_size(v, memo, visiting) for k, v in node.value)
    visiting.discard(key)
    memo[key] = min(size, MAX_EXPANDED_NODES + 1)  # capped: the sum stays small however deep the bomb
    return memo[key]


def parse_yaml(text: str, where: str) -> Any:
    """YAML -> Python, with duplicate keys, syntax errors and alias bombs as one UserError line."""
    try:
        loader = _UniqueKeyLoader(text)  # its reader refuses control characters at once
    except yaml.reader.ReaderError as exc:
        where_in = f"character #x{exc.character:04x} at position {exc.position}"  # the code point, an int
        raise UserError(f"{where} is not valid YAML ({where_in}: {exc.reason}): fix it") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set()) > MAX_EXPANDED_NODES:
            raise UserError(
                f"{where} expands to more than {MAX_EXPANDED_NODES} values through its aliases (*name): "
                "write the values out instead"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise UserError(f"{where} is not valid YAML{line} ({problem}): fix it") from None
    except RecursionError:
        raise UserError(f"{where} nests too deeply to read: flatten it") from None
    finally:
        loader.dispose()


def load_spec(path: str | Path, overrides: dict[str, str] | None = None, *, smoke: bool = False) -> SweepSpec:
    """Parse, override, validate. Every problem is one UserError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file {path} does not exist: pass a file from sweeps/")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): re-save it as UTF-8") from None
    return spec_from_mapping(parse_yaml(text, str(path)), path.name, overrides, smoke=smoke)


def spec_from_mapping(
    raw: Any, where: str, overrides: dict[str, str] | None = None, *, smoke: bool = False, checks: bool = True
) -> SweepSpec:
    """A parsed sweep file -> a validated spec; anything wrong is one UserError.

    `checks=False` validates the file alone (schema, paths made absolute) and skips the
    checks against this machine (`check_loaded`): a sweep folder copied from a cluster is
    read with its cluster's model paths and data folder (`sweep/folder.py`)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping of keys (name, method, task, ...)")
    raw = dict(raw)
    if smoke:  # before --set, so explicit overrides win over the smoke defaults
        smoke_values = raw.get("smoke") or {}
        if not isinstance(smoke_values, dict):
            raise UserError(f"smoke in {where} must be a mapping of overrides, got {smoke_values!r}")
        raw = _merge(raw, smoke_values)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, where)
    # Like every other command: no data_dir means $SCRUTABLE_DATA_DIR if set, else the hub.
    if not raw.get("data_dir") and os.environ.get(DATA_DIR_ENV):
        raw["data_dir"] = os.environ[DATA_DIR_ENV]
    # Relative paths mean the launching directory; trials run elsewhere, so fix them now,
    # defaults included (`storage: runs` unset reaches Tune as /abs/runs, never as "runs").
    # A storage URI (s3://, gs://) stays a URI: Tune opens it with a pyarrow filesystem.
    for key in PATH_FIELDS:
        if raw.get(key) is None and key in _PATH_DEFAULTS:
            raw[key] = _PATH_DEFAULTS[key]
    for key in ("data_dir", "local_dir"):
        if isinstance(raw.get(key), str):
            try:
                raw[key] = str(Path(raw[key]).expanduser().resolve())
            except (OSError, RuntimeError, ValueError):
                raise UserError(f"{key} in {where} is not a usable path: {raw[key]!r}") from None
    if isinstance(raw.get("storage"), str):
        raw["storage"] = normalise(raw["storage"])
    if isinstance(raw.get("optuna_storage"), str):
        raw["optuna_storage"] = absolute_database_uri(raw["optuna_storage"], f"optuna_storage in {where}")
    if isinstance(raw.get("tracking"), dict) and isinstance(raw["tracking"].get("uri"), str):
        raw["tracking"] = {
            **raw["tracking"],
            "uri": absolute_database_uri(raw["tracking"]["uri"], f"tracking.uri in {where}"),
        }
    spec = from_mapping(SweepSpec, raw, where=where)
    if checks:
        check_loaded(spec, where)
    return spec


def check_loaded(spec: SweepSpec, where: str) -> None:
    """What a spec must pass on this machine before it runs: the names resolve, a trial at
    either end of the search is a valid config that fits the model, Optuna's database opens,
    the data folder exists."""
    # The checks import this module (they read SweepSpec and Sampler), so they are imported here.
    from scrutable.sweep.spec_checks import check_names, check_optuna_storage, check_search_ends

    check_names(spec, where)
    example = spec.space.example_point()
    spec.trial_config(example)  # an unknown training key fails now, not in a trial
    check_search_ends(spec, where)
    if spec.optuna_storage is not None:
        check_optuna_storage(spec.optuna_storage, f"optuna_storage in {where}")
    if spec.data_dir is not None and not Path(spec.data_dir).is_dir():
        raise UserError(
            f"data_dir {spec.data_dir} in {where} does not exist: point it at ../shared/data "
            "or remove it to load from the hub"
        )


def absolute_database_uri(uri: str, what: str) -> str:
    """A SQLite (or `file:`) URI with a relative path, made absolute against the launching
    directory: trials and a later `--resume` run elsewhere. Other URIs are returned as is."""
    for prefix in ("sqlite:///", "file:"):
        if uri.startswith(prefix):
            rest = uri[len(prefix) :]
            path, sep, query = rest.partition("?")
            if not path or path == ":memory:" or path.startswith("/"):
                return uri
            try:
                absolute = str(Path(path).expanduser().resolve())
            except (OSError, RuntimeError, ValueError):
                raise UserError(f"{what} names an unusable path: {path!r}") from None
            return f"{prefix}{absolute}{sep}{query}" if prefix == "file:" else f"sqlite:///{absolute}{sep}{query}"
    return uri


# Every spec field that names a place on disk; each reaches Tune and the trials absolute.
PATH_FIELDS = ("storage", "local_dir", "data_dir")
_PATH_DEFAULTS = {f.name: f.default for f in fields(SweepSpec) if f.name in PATH_FIELDS and f.default is not None}


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "search":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(raw: dict[str, Any], dotted: str, value: str, where: str) -> None:
    """`training.steps=10` sets raw["training"]["steps"] = "10" (typed when validated)."""
    parts = dotted.split(".")
    valid_top = [f.name for f in fields(SweepSpec)]
    if parts[0] not in valid_top:
        raise UserError(f"--set {dotted}: unknown key '{parts[0]}': {suggest(parts[0], valid_top)}")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, dict):
            child = node[part] = dict(child)  # never modify the caller's mapping
        else:
            raise UserError(f"--set {dotted}: {part} in {where} is not a mapping")
        node = child
    # "0.5" -> 0.5, "[3, 5]" -> list; never eval
    parsed = parse_yaml(value, f"--set {dotted}={value}") if value else value
    node[parts[-1]] = parsed
