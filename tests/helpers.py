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

`tiny_spec(**changes)` is the smallest sweep spec (PEZ on SST-2, tiny random GPT-2s, alpha
searched); `TINY_METHOD_SETTINGS` and `TINY_METHOD_EXTRA` are a few steps of each registered
method on the same tiny models; `s3_bucket(monkeypatch)` is an S3 server on 127.0.0.1 (moto)
with one bucket, `sweeps`, and the AWS environment pointing at it.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

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


_TINY_SPEC: dict[str, Any] = {
    "name": "t",
    "method": "pez",
    "task": "sst2",
    "model": "tiny-gpt2",
    "scorer": "tiny-gpt2",
    "search": {"alpha": {"low": 0.01, "high": 1.0, "log": True, "zero": True}},
    "trials": 2,
    "training": {"steps": 2},
}


def tiny_spec(**changes: Any) -> dict[str, Any]:
    """The smallest sweep spec as a YAML mapping, with `changes`; a fresh copy each call, so no
    test changes another's."""
    return {**copy.deepcopy(_TINY_SPEC), **changes}


# A few steps of a registered method (`trainables/`) on the tiny models: what every method
# shares, then each method's own (RLPrompt's policy is a tiny GPT-2 as well).
TINY_METHOD_SETTINGS = {
    "task": "sst2",
    "model": "tiny-gpt2",
    "scorer": "tiny-gpt2",
    "prompt_length": 3,
    "steps": 4,
    "eval_interval": 2,
    "batch_size": 4,
    "eval_limit": 8,
    "test_limit": 8,
    "alpha": 0.5,
    "seed": 3,
}
TINY_METHOD_EXTRA: dict[str, dict[str, Any]] = {
    "soft_prompt": {"learning_rate": 0.3},
    "pez": {},
    "rlprompt": {"policy_model": "tiny-gpt2", "prompts_per_step": 4, "mlp_hidden_size": 32},
}


@contextmanager
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An S3 server on 127.0.0.1 (moto) holding the empty bucket `sweeps`, with the AWS
    environment (monkeypatched) pointing at it; yields a boto3 S3 client."""
    needs(importlib.util.find_spec("moto") is not None, "moto (pip install -e '.[dev]')")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        }.items():
            monkeypatch.setenv(key, value)
        # moto keeps its buckets in process-wide memory, across servers: start each test empty.
        urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")).close()
        client = boto3.client("s3")
        client.create_bucket(Bucket="sweeps")
        yield client
    finally:
        server.stop()


def evaluation_steps(rows: list[dict[str, Any]], trial: str) -> list[int]:
    """The distinct `train/step`s of a trial's result.json rows, checked as a resume must leave them.

    A kill that lands between a trial's report and Tune's registration of that report's
    checkpoint (a save round trip to the trial's actor) restarts the trial from the checkpoint
    before it, so that one evaluation is reported again (CI saw 1, 2, 2, 3, 4). That replay
    must be the same evaluation: the same prompt, the same objective. Nothing else may repeat,
    and steps never go back."""
    steps: list[int] = []
    seen: dict[int, tuple[str, float]] = {}
    for row in rows:
        if "train/step" not in row:  # a step report (progress/*), not an evaluation
            continue
        step = int(row["train/step"])
        values = (str(row["prompt/token_ids"]), float(row["task/dev_objective"]))
        if step in seen:
            assert step == steps[-1], (trial, "a step other than the last one repeated", steps, step)
            assert values[0] == seen[step][0], (trial, step, "a replay chose another prompt", seen[step], values)
            assert abs(values[1] - seen[step][1]) <= 1e-5, (trial, step, "a replay scored apart", seen[step], values)
            continue
        assert not steps or step > steps[-1], (trial, "steps went back", steps, step)
        seen[step] = values
        steps.append(step)
    return steps
