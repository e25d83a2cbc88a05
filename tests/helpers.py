"""Small helpers the tests share: waiting on a condition, and telling CI from a laptop.

`wait_for` replaces sleeps and hand-written deadlines: a test waits for the thing it needs
(a port that answers, a file that appears, an actor that came back), bounded by a generous
timeout that fails with a message naming what never happened. The bound is far above what
a loaded machine needs, and below pytest-timeout's per-test limit (pyproject.toml).

`needs(available, what)` is for a dependency the project installs (MiniLM, moto, sshd):
missing on a developer's machine it skips; missing in CI (`CI` set, as `.ci/run` does) it
fails, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def needs(available: bool, what: str) -> None:
    """Skip without `what` on a developer's machine; fail without it in CI."""
    if available:
        return
    if in_ci():
        pytest.fail(f"CI must provide {what}, and it is missing")
    pytest.skip(f"{what} is missing (CI fails here instead of skipping)")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `condition` until it returns something truthy and return that; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
