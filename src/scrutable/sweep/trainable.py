"""The Ray Tune trainable: a thin function around any registered method's `run`.

Ray stays here and in the rest of `scrutable.sweep`; `trainables/` never imports it. The
sweep's fixed spec arrives once per trial through `tune.with_parameters` (the object
store), the searched values, already decoded (`search_space.py`), in the trial's config
under their own names. The trainable builds the method's config from both, reconnects to
the sweep's shared scorer actor, resumes from `tune.get_checkpoint()` when Tune restarts
or restores the trial, and turns every evaluation into
`tune.report(row, checkpoint=...)` with `state.pt` and `card.json`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from scrutable.metrics import keys
from scrutable.trainables import get_method
from scrutable.trainables.common import Evaluation, load_state, save_state

CARD_FILE = "card.json"


def tune_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Tune-friendly values: token ids as one string (lists would be flattened into columns)."""
    out = dict(metrics)
    if keys.PROMPT_TOKEN_IDS in out:
        out[keys.PROMPT_TOKEN_IDS] = " ".join(str(t) for t in out[keys.PROMPT_TOKEN_IDS])
    return out


def trainable(config: dict[str, Any], spec: dict[str, Any]) -> None:
    from scrutable.sweep.scorer_actor import ActorScorer
    from scrutable.sweep.spec import spec_from_config

    sweep = spec_from_config(spec)
    method = get_method(sweep.method)
    trial_config = sweep.trial_config(sweep.space.decoded(config))
    scorer = ActorScorer(sweep.name, tune.get_context().get_trial_id())
    node_id = ray.get_runtime_context().get_node_id()
    checkpoint = tune.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_state(directory)

    def report(evaluation: Evaluation) -> None:
        with tempfile.TemporaryDirectory() as directory:
            save_state(evaluation.state, directory)
            card = dict(evaluation.card.to_dict(), final=evaluation.final, step=evaluation.step)
            (Path(directory) / CARD_FILE).write_text(json.dumps(card, indent=2))
            metrics = {**tune_metrics(evaluation.metrics), keys.NODE_ID: node_id}  # where it ran (clusters)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    method.run(trial_config, scorer=scorer, report=report, state=state)


def with_spec(spec_dict: dict[str, Any], resources: dict[str, float]) -> Any:
    """The trainable as Tune runs it: the spec bound, the trial's resources declared."""
    return tune.with_resources(tune.with_parameters(trainable, spec=spec_dict), resources)
