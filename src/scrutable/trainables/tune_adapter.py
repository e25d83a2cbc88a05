"""The Ray Tune adapter: a thin function trainable around any registered method's `run`.

Ray stays here and in `scrutable.sweep`. The trial's `config` holds the sweep spec (as a plain mapping) under
`SPEC_KEY` and the searched values under their own names; the adapter builds the method's
config from both, reconnects to the sweep's shared scorer actor, resumes from
`tune.get_checkpoint()` when Tune restarts or restores the trial, and turns every
evaluation into `tune.report(metrics, checkpoint=...)` with `state.pt` and `card.json`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from scrutable.trainables import get_method
from scrutable.trainables.common import Evaluation, load_state, save_state

SPEC_KEY = "scrutable_spec"
CARD_FILE = "card.json"


def tune_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Tune-friendly values: token ids as one string (lists would be flattened into columns)."""
    out = dict(metrics)
    if "prompt/token_ids" in out:
        out["prompt/token_ids"] = " ".join(str(t) for t in out["prompt/token_ids"])
    return out


def trainable(config: dict[str, Any]) -> None:
    from scrutable.sweep.scorer_actor import ActorScorer
    from scrutable.sweep.spec import spec_from_config

    spec = spec_from_config(config[SPEC_KEY])
    method = get_method(spec.method)
    trial_config = spec.trial_config({name: config[name] for name in spec.search})
    scorer = ActorScorer(spec.name, tune.get_context().get_trial_id())
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
            tune.report(tune_metrics(evaluation.metrics), checkpoint=tune.Checkpoint.from_directory(directory))

    method.run(trial_config, scorer=scorer, report=report, state=state)
