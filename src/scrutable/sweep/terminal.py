"""Plain-text output that fits a terminal: one clock, 80 columns, prompts shown as read.

Every line the sweep prints outside the live table goes through here: `say` stamps a
start-up or closing line with the time since the command's start (the one clock that the
live table's footer and the final summary also use), `fit` wraps at word boundaries to 80
columns, and `quote_prompt` shows a prompt quoted with its leading space, control
characters escaped and an ellipsis where it is cut (the full text stays in the files).

    started = time.monotonic()
    say(started, "starting Ray (local, 127.0.0.1 only)")   # [     0s] starting Ray ...
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable

WIDTH = 80  # every plain-text line the sweep prints fits an 80-column terminal


def say(started: float, message: str, *, clock: Callable[[], float] = time.monotonic) -> None:
    """One start-up or closing line, stamped with the time since the command's start."""
    print(fit(f"[{duration(clock() - started):>7}] {message}", indent=10), flush=True, file=sys.stdout)


def fit(text: str, *, indent: int = 2, width: int = WIDTH) -> str:
    """Wrap `text` at word boundaries to `width` columns; a continuation is indented.

    A single word longer than a line (a long path) is kept whole rather than cut mid-word."""
    return "\n".join(
        textwrap.fill(
            line,
            width=width,
            subsequent_indent=" " * indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
        or line
        for line in text.splitlines()
    )


def quote_prompt(text: str | None, chars: int) -> str:
    """A prompt as the model reads it: quoted, leading/inner spaces kept, control characters
    escaped, cut to `chars` characters (quotes included) with an ellipsis."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text or "")
    chars = max(chars, 4)
    if len(shown) + 2 > chars:
        shown = shown[: chars - 3] + "…"
    return f"'{shown}'"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
