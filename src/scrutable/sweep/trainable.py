"""The Ray Tune trainable: a thin function around any registered method's `run`.

Ray stays here and in the rest of `scrutable.sweep`; `trainables/` never imports it. The
sweep's fixed spec arrives once per trial through `tune.with_parameters` (the object
store), the searched values, already decoded (`search_space.py`), in the trial's config
under their own names. The trainable builds the method's config from both, reconnects to
the sweep's shared scorer actor, resumes from `tune.get_checkpoint()` when Tune restarts
or restores the trial, and turns every evaluation into
`tune.report(row, checkpoint=...)` with `state.pt`, `card.json` and `card.txt`. Per-step
values (`progress`) are buffered and sent at most once every `PROGRESS_EVERY_S` as a
checkpoint-free report (`progress/step`, `progress/history`), or with the next evaluation,
so MLflow charts every step without a Tune report per step.

Placement: the trial's models run on the GPU Ray reserved for it (`resources.gpu`; the
config's `device: auto`) with as many torch threads as its `resources.cpu`
(`sweep/placement.py`); the method receives the resolved device in its config.

Start-up: the trial looks the scorer actor up in the background (`ConnectingScorer`) and
loads its task model meanwhile, since the actor may still be loading its own model when
the first trials start (`launcher.start_scorer`); the first score waits for it. The
methods' modules are imported inside `trainable`, in the trial: the driver, which only
pickles it by reference, has no use for them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from scrutable.metrics import keys
from scrutable.sweep.folder import CARD_FILE, CARD_TEXT_FILE
from scrutable.sweep.timing import mark

if TYPE_CHECKING:
    from scrutable.trainables.common import Evaluation

# At most one step report per trial this often, so the driver stays idle between evaluations
# (SCRUTABLE_PROGRESS_EVERY_S=0 reports every step, as the tests do).
PROGRESS_EVERY_S = float(os.environ.get("SCRUTABLE_PROGRESS_EVERY_S", "2.0"))


def tune_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Tune-friendly values: token ids as one string (lists would be flattened into columns)."""
    out = dict(metrics)
    if keys.PROMPT_TOKEN_IDS in out:
        out[keys.PROMPT_TOKEN_IDS] = " ".join(str(t) for t in out[keys.PROMPT_TOKEN_IDS])
    return out


def trainable(config: dict[str, Any], spec: dict[str, Any]) -> None:
    mark("trial: process started", _process_start())
    mark("trial: function entered")
    from scrutable.sweep.placement import place_worker
    from scrutable.sweep.spec import spec_from_config
    from scrutable.trainables import get_method
    from scrutable.trainables.common import config_model, load_state, save_state

    sweep = spec_from_config(spec)
    scorer = ConnectingScorer(sweep.name, tune.get_context().get_trial_id())  # meanwhile, the task model
    method = get_method(sweep.method)
    trial_config = sweep.trial_config(sweep.space.decoded(config))
    placement = place_worker(trial_config.device, "the trial (training.device)")
    trial_config = dataclasses.replace(trial_config, device=placement.device)
    config_model(trial_config, trial_config.model)  # the copy `method.run` takes (one per process)
    mark("trial: task model loaded")
    node_id = ray.get_runtime_context().get_node_id()
    checkpoint = tune.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_state(directory)

    steps = StepBuffer()

    def progress(step: int, values: dict[str, float]) -> None:
        if not steps.seen:
            mark("trial: first step")
        steps.add(step, values)
        if steps.due():
            tune.report(steps.flush())

    def report(evaluation: Evaluation) -> None:
        with tempfile.TemporaryDirectory() as directory:
            save_state(evaluation.state, directory)
            card = dict(evaluation.card.to_dict(), final=evaluation.final, step=evaluation.step)
            (Path(directory) / CARD_FILE).write_text(json.dumps(card, indent=2))
            (Path(directory) / CARD_TEXT_FILE).write_text(evaluation.card.render() + "\n")
            metrics = {**tune_metrics(evaluation.metrics), keys.NODE_ID: node_id, **steps.flush()}  # node: clusters
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    method.run(trial_config, scorer=scorer, report=report, state=state, progress=progress)


def _process_start() -> float:
    """When this worker process started (`time.time()`): Ray may have started it before the trial."""
    import psutil  # one of Ray's own dependencies

    return float(psutil.Process().create_time())


class ConnectingScorer:
    """The sweep's scorer actor (`ActorScorer`), looked up in a background thread.

    Looking it up waits until the actor has loaded its model; meanwhile the trial loads its
    own. Every attribute (`perplexity`, `submit_gradients`, `vocab_signature`, ...) is the
    connected `ActorScorer`'s, so the first use waits for the connection, and an error in
    it (the actor could not start) is raised there."""

    def __init__(self, sweep_name: str, trial: str) -> None:
        import threading

        from scrutable.sweep.scorer_actor import ActorScorer

        self._connected: Future[Any] = Future()

        def connect() -> None:
            try:
                self._connected.set_result(ActorScorer(sweep_name, trial))
            except BaseException as exc:  # raised at the first use
                self._connected.set_exception(exc)

        threading.Thread(target=connect, name="scorer-connection", daemon=True).start()

    def __getattr__(self, name: str) -> Any:  # only names not set on this object
        return getattr(self._connected.result(), name)


class StepBuffer:
    """The per-step values since the last report, as the `progress/*` fields of the next one."""

    def __init__(self, every_s: float = PROGRESS_EVERY_S) -> None:
        self.every_s = every_s
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.last = time.monotonic()
        self.seen = False  # any step yet

    def add(self, step: int, values: dict[str, float]) -> None:
        # progress() names a train/<name> value by <name>; per step it is step/<name> (keys.STEP_PREFIX).
        self.pending.append((step, {keys.STEP_PREFIX + k: float(v) for k, v in values.items()}))
        self.seen = True

    def due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.last >= self.every_s

    def flush(self) -> dict[str, Any]:
        self.last = time.monotonic()
        if not self.pending:
            return {}
        out = {keys.PROGRESS_STEP: self.pending[-1][0], keys.PROGRESS_HISTORY: json.dumps(self.pending)}
        self.pending = []
        return out


def with_spec(spec_dict: dict[str, Any], resources: dict[str, float]) -> Any:
    """The trainable as Tune runs it: the spec bound, the trial's resources declared."""
    return tune.with_resources(tune.with_parameters(trainable, spec=spec_dict), resources)
