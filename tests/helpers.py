"""Small helpers the tests share: waiting on a condition, and telling CI from a laptop.

`wait_for` replaces sleeps and hand-written deadlines: a test waits for the thing it needs
(a port that answers, a file that appears, an actor that came back), bounded by a generous
timeout that fails with a message naming what never happened. The bound is far above what
a loaded machine needs, and below pytest-timeout's per-test limit (pyproject.toml).

`needs(available, what)` is for a dependency the project installs (MiniLM, moto, sshd):
missing on a developer's machine it skips; missing in CI (`CI` set, as `.ci/run` does) it
fails, so CI can never pass by skipping.

`main_without_root_file_powers(argv)` runs `scrutable.cli.main` the way an ordinary user
would meet file permissions, for tests that run as root (CI does): a child process of the
same user without the capabilities that let root ignore permission bits. Same interpreter,
same checkout (an ordinary user could not even read a checkout under /root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


# The capabilities by which root ignores permission bits (capabilities(7)); without them a
# folder with mode 0500 is read-only to its owner, root included.
ROOT_FILE_POWERS = ("dac_override", "dac_read_search", "fowner", "linux_immutable")


def main_without_root_file_powers(argv: list[str]) -> int:
    """`scrutable.cli.main(argv)` in a child process without ROOT_FILE_POWERS (dropped from
    its bounding set, so it cannot regain them), in this process's working directory and
    environment. Its stdout and stderr are copied to this process's, for capsys."""
    needs(shutil.which("setpriv") is not None, "setpriv (util-linux), to drop root's file permissions")
    dropped = ",".join(f"-{name}" for name in ROOT_FILE_POWERS)
    script = "import sys; from scrutable.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        ["setpriv", "--bounding-set", dropped, sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode
