"""The sweep's terminal progress: a live trial table on a terminal, one line per event elsewhere.

On a terminal, `rich.live` redraws one table in place (trial, searched values, step,
objectives, status) under a footer with the elapsed time, trials and steps done, and an
estimate of the time left. When stdout is not a terminal (CI, `> sweep.log`), each event
(trial started, evaluated, finished, failed) is one line carrying the same footer, so the
log grows with events, not with trials x redraws.

Every time shown, here and in the start-up lines (`say`), counts from one clock: the
command's start (`started`, `time.monotonic()`), so the footer, the event lines and the
final "finished in" agree. The live table is re-rendered on every refresh (twice a
second), not only on events, so its clock never freezes between Tune events.

The estimate is the naive one: the time per step so far (model loading included) times
the steps left, where a trial's steps are its spec's `training.steps` and a failed trial
counts as done. It settles once every concurrent trial has reported once.

`SweepProgress` holds no Ray; `TuneProgress` is the Ray Tune callback that feeds it:

    progress = SweepProgress(spec, steps_per_trial=spec.trial_config(spec.space.example_point()).steps)
    tune.RunConfig(callbacks=[TuneProgress(progress)], ...)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from scrutable.metrics import keys
from scrutable.sweep.spec import SweepSpec
from scrutable.sweep.terminal import duration as _duration

SHORT_PARAM = {"prompt_length": "L", "learning_rate": "lr"}


@dataclass
class TrialRow:
    params: dict[str, Any]
    status: str = "PENDING"
    step: int = 0
    objectives: dict[str, float] = field(default_factory=dict)


class SweepProgress:
    """Trial rows, counts and an estimate of the time left, rendered live or as event lines."""

    def __init__(
        self,
        spec: SweepSpec,
        *,
        steps_per_trial: int,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        self.spec = spec
        self.steps_per_trial = steps_per_trial
        self.console = console or Console()
        self.clock = clock
        self.started = clock() if started is None else started  # the command's start: one clock
        self.first_trial_seen = False
        self.rows: dict[str, TrialRow] = {}
        self.failed: dict[str, str] = {}
        self.live: Live | None = None

    # --- events -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the live table (terminals only); event lines need nothing started.

        `get_renderable` makes every refresh (twice a second) render the table anew, so the
        elapsed time and the estimate move between Tune events too."""
        if self.console.is_terminal and self.live is None:
            self.live = Live(
                console=self.console, refresh_per_second=2, transient=False, get_renderable=self.render
            )
            self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=True)
            self.live.stop()
            self.live = None

    def trial_started(self, trial_id: str, params: dict[str, Any]) -> None:
        row = self.rows.setdefault(trial_id, TrialRow(params))
        row.status = "RUNNING"
        if not self.first_trial_seen:
            self.console.print(
                f"[{_duration(self.clock() - self.started):>7}] first trial started", markup=False, highlight=False
            )
        self.first_trial_seen = True
        self._event(f"trial {trial_id} started ({_params_text(params)})")

    def trial_result(self, trial_id: str, params: dict[str, Any], result: dict[str, Any]) -> None:
        """A Tune report: a step update (`progress/step`) or an evaluation (`train/step` + objectives)."""
        row = self.rows.setdefault(trial_id, TrialRow(params, status="RUNNING"))
        steps = [result.get(keys.TRAIN_STEP), result.get(keys.PROGRESS_STEP)]
        row.step = max([row.step, *(int(s) for s in steps if isinstance(s, int | float))])
        found = {m: float(result[m]) for m in self.spec.metric_names if isinstance(result.get(m), int | float)}
        row.objectives.update(found)
        if found:  # an evaluation: worth a line; step updates only move the live table
            self._event(f"trial {trial_id} step {row.step}: {_objectives_text(found)}")
        else:
            self._refresh()

    def trial_completed(self, trial_id: str, params: dict[str, Any]) -> None:
        row = self.rows.setdefault(trial_id, TrialRow(params))
        row.status, row.step = "DONE", max(row.step, self.steps_per_trial)
        self._event(f"trial {trial_id} done: {_objectives_text(row.objectives)}")

    def trial_failed(self, trial_id: str, params: dict[str, Any], reason: str) -> None:
        row = self.rows.setdefault(trial_id, TrialRow(params))
        row.status = "FAILED"
        self.failed[trial_id] = reason
        self._event(f"trial {trial_id} failed: {reason}")

    # --- numbers ----------------------------------------------------------------------------

    @property
    def trials_done(self) -> int:
        return sum(row.status in ("DONE", "FAILED") for row in self.rows.values())

    @property
    def total_steps(self) -> int:
        return self.spec.trials * self.steps_per_trial

    @property
    def steps_done(self) -> int:
        # A failed trial will not run its remaining steps: count them as done for the estimate.
        return sum(
            self.steps_per_trial if row.status in ("DONE", "FAILED") else min(row.step, self.steps_per_trial)
            for row in self.rows.values()
        )

    def eta_s(self) -> float | None:
        done, elapsed = self.steps_done, self.clock() - self.started
        if done <= 0:
            return None
        return elapsed / done * max(self.total_steps - done, 0)

    def footer(self) -> str:
        eta = self.eta_s()
        return (
            f"{self.trials_done}/{self.spec.trials} trials done ({len(self.failed)} failed), "
            f"steps {self.steps_done}/{self.total_steps}, elapsed {_duration(self.clock() - self.started)}, "
            f"ETA {'?' if eta is None else _duration(eta)}"
        )

    # --- rendering --------------------------------------------------------------------------

    def render(self) -> Group:
        table = Table(box=None, header_style="bold", pad_edge=False)
        params = list(self.spec.search)
        for column in ["trial", *(SHORT_PARAM.get(p, p) for p in params), "step", *self.spec.metric_names, "status"]:
            table.add_column(column, justify="left" if column in ("trial", "status") else "right")
        for trial_id, row in self.rows.items():
            style = {"DONE": "green", "FAILED": "red"}.get(row.status)
            table.add_row(
                trial_id,
                *(_cell(row.params.get(p)) for p in params),
                f"{row.step}/{self.steps_per_trial}",
                *(_cell(row.objectives.get(m)) for m in self.spec.metric_names),
                Text(row.status, style=style or ""),
            )
        return Group(table, Text(self.footer()))

    def _event(self, message: str) -> None:
        if self.live is not None:
            self._refresh()
            return
        self.console.print(
            f"[{_duration(self.clock() - self.started):>7}] {message} | {self.footer()}",  # a log line: never wrapped
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())


class TuneProgress(Callback):
    """Ray Tune callback (driver side) feeding a `SweepProgress`."""

    def __init__(self, progress: SweepProgress) -> None:
        self.progress = progress

    # Tune pickles its callbacks into the experiment state and `Tuner.restore` brings them
    # back: keep the spec, and give the resumed driver a fresh table on its own stdout.
    # The command's start travels as wall time: monotonic readings mean nothing in another process.
    def __getstate__(self) -> dict[str, Any]:
        progress = self.progress
        started_wall = time.time() - (progress.clock() - progress.started)
        return {"spec": progress.spec, "steps_per_trial": progress.steps_per_trial, "started_wall": started_wall}

    def __setstate__(self, state: dict[str, Any]) -> None:
        started_wall = state.get("started_wall")
        started = None if started_wall is None else time.monotonic() - max(time.time() - started_wall, 0.0)
        self.progress = SweepProgress(state["spec"], steps_per_trial=state["steps_per_trial"], started=started)

    def setup(self, **info: Any) -> None:  # type: ignore[override]  # Tune passes keywords only
        self.progress.start()
        _STARTED.append(self.progress)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.progress.stop()

    def _params(self, trial: Any) -> dict[str, Any]:
        return self.progress.spec.space.decoded(trial.config)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress.trial_started(trial.trial_id, self._params(trial))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self.progress.trial_result(trial.trial_id, self._params(trial), result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress.trial_completed(trial.trial_id, self._params(trial))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        from scrutable.sweep.tracking import error_reason

        self.progress.trial_failed(trial.trial_id, self._params(trial), error_reason(trial))


_STARTED: list[SweepProgress] = []


def stop_all() -> None:
    """Stop every live table this process started (an interrupted sweep skips Tune's end hook)."""
    while _STARTED:
        _STARTED.pop().stop()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{SHORT_PARAM.get(k, k)}={_cell(v)}" for k, v in params.items())


def _objectives_text(objectives: dict[str, float]) -> str:
    return ", ".join(f"{k}={_cell(v)}" for k, v in objectives.items()) or "no objectives reported"
