"""The report's view of a sweep folder, and the one thing it computes: aggregates over seeds.

A `Sweep` is a `SweepFolder` (`sweep/folder.py`: the layout, the validated spec, the
trial records, their histories) with its records read once. Trials that share every
searched value but the seed form a setting (`groups`); each table cell and plotted point
is the mean ± sample standard deviation of one metric over a setting's seeds (`stat`):

    sweep = load_sweep(Path("runs/quickstart"))
    for setting, records in groups(sweep).items():
        print(setting, stat([r.metrics.get(keys.TASK_TEST) for r in records]))

Everything else (the frontier, the histories) is the folder's own (`SweepFolder.frontier`,
`SweepFolder.history`), so the report shows what the sweep exported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scrutable.metrics import keys
from scrutable.report.plots import Point
from scrutable.sweep.folder import SweepFolder
from scrutable.sweep.results import TrialRecord
from scrutable.sweep.spec import SweepSpec

METRIC_NAME = {"sst2": "accuracy", "boolq": "accuracy", "yelp": "joint score"}


@dataclass(frozen=True)
class Sweep:
    folder: SweepFolder
    records: list[TrialRecord]

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def spec(self) -> SweepSpec:
        return self.folder.spec

    @property
    def completed(self) -> list[TrialRecord]:
        return [r for r in self.records if r.completed]

    @property
    def smoke(self) -> bool:
        return self.spec.model.startswith("tiny-") or self.spec.scorer.startswith("tiny-")

    @property
    def metric_name(self) -> str:
        return METRIC_NAME.get(self.spec.task, "metric")


def load_sweep(folder: Path) -> Sweep:
    """Open a sweep folder (one line if it is none) and read its trials."""
    opened = SweepFolder.open(folder, fix="pass folders made by `scrutable sweep`")
    return Sweep(opened, opened.trials())


# --- statistics over seeds ------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    n: int  # finite values
    mean: float
    std: float | None  # sample standard deviation (n - 1); None for n < 2

    def point(self, x: float) -> Point:
        return Point(x, self.mean, self.std or 0.0)


def stat(values: Sequence[float | None]) -> Stat:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return Stat(0, math.nan, None)
    return Stat(len(finite), statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None)


Getter = Callable[[TrialRecord], float | None]


def metric(key: str) -> Getter:
    return lambda r: r.metrics.get(key)


def test_gap(record: TrialRecord) -> float | None:
    """Test metric of the prompt minus that of its unembedded tokens (performance differential)."""
    soft, hard = record.metrics.get(keys.TASK_TEST), record.metrics.get(keys.TASK_TEST_UNEMBEDDED)
    return None if soft is None or hard is None else soft - hard


def setting_names(spec: SweepSpec) -> list[str]:
    """The searched values that define a setting; seeds repeat a setting."""
    return [name for name in spec.search if name != "seed"]


def groups(sweep: Sweep) -> dict[tuple[Any, ...], list[TrialRecord]]:
    """Completed trials by setting, settings in ascending order."""
    names = setting_names(sweep.spec)
    grouped: dict[tuple[Any, ...], list[TrialRecord]] = {}
    for record in sweep.completed:
        grouped.setdefault(tuple(record.params.get(n) for n in names), []).append(record)
    return {k: grouped[k] for k in sorted(grouped, key=lambda k: tuple(_sortable(v) for v in k))}


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def prompt_length(sweep: Sweep, record: TrialRecord) -> int:
    """A trial's prompt length: searched, else the spec's fixed value."""
    return int(sweep.spec.trial_config(record.params).prompt_length)
