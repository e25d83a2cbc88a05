"""What an ended trial leaves for its MLflow run: its interpretability card, or its error.

A finished trial's last checkpoint holds the card the trainable wrote (`card.json`, and
`card.txt` rendered for reading; `card.py` builds it); a failed trial's folder holds Tune's
`error.txt`, whose last line is the message. The tracking callback (`tracking.py`) closes a
trial's run with these, live or in the repair after a crash (`tracking_repair.py`):

    card = final_card(trial)       # dict, or None when the checkpoint holds no card
    text = final_card_text(trial)  # str, or None
    reason = error_reason(trial)   # "UserError: ..." or "unknown error"

`trial` is a Tune trial, or anything with its `checkpoint` (`.path`, `.filesystem`) and
`error_file`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scrutable.sweep.folder import CARD_FILE, CARD_TEXT_FILE


def _checkpoint_file(trial: Any, name: str) -> bytes | None:
    """A file of the trial's checkpoint, or None when there is no checkpoint or no such file."""
    checkpoint = trial.checkpoint
    if checkpoint is None:
        return None
    # Through the checkpoint's own filesystem: with `storage: s3://...` it lives in the bucket.
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as stream:
            return bytes(stream.read())
    except OSError:  # no such file in this checkpoint (pyarrow raises FileNotFoundError, an OSError)
        return None


def final_card(trial: Any) -> dict[str, Any] | None:
    """The card the trainable wrote into the trial's last checkpoint (`card.json`)."""
    raw = _checkpoint_file(trial, CARD_FILE)
    if raw is None:
        return None
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def final_card_text(trial: Any) -> str | None:
    """The rendered card the trainable wrote beside card.json (`card.txt`)."""
    raw = _checkpoint_file(trial, CARD_TEXT_FILE)
    return None if raw is None else raw.decode()


def error_reason(trial: Any) -> str:
    """The last line of the trial's error: the `UserError`/exception message, not a traceback."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path and Path(path).is_file():
        text = Path(path).read_text()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
