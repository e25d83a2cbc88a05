"""Start-up marks for `benchmarks/startup.py`: off unless SCRUTABLE_STARTUP_TRACE names a file.

    SCRUTABLE_STARTUP_TRACE=/tmp/trace.jsonl scrutable sweep sweeps/quickstart.yaml --smoke

The driver and every trial append one JSON line per mark, `{"event", "time", "pid"}`
(`time.time()`, so the processes share one clock), e.g. `ray started`, `scorer loaded`,
`trial: first step`. Lines this short are appended whole by each process (O_APPEND), so
the processes need no lock. Ray's workers inherit the variable from the driver that
started Ray. Without the variable a mark costs one dictionary look-up.
"""

from __future__ import annotations

import json
import os
import time

TRACE_ENV = "SCRUTABLE_STARTUP_TRACE"


def mark(event: str, at: float | None = None) -> None:
    """Record that `event` happened now (or at `at`, a `time.time()`), if tracing is on."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    line = json.dumps({"event": event, "time": time.time() if at is None else at, "pid": os.getpid()})
    with open(path, "a", encoding="utf-8") as trace:
        trace.write(line + "\n")
