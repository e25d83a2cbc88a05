"""Every bad input a user can give `evaluate`, `train`, `sweep` and `pareto` is answered the
same way: exit code 2, one line on stderr naming the problem and the fix, no traceback, and
nothing created or changed on disk (the test snapshots its whole scratch folder, which is
also the working directory). Runs in-process through `scrutable.cli.main`; no case starts Ray.

Cases marked `unwritable` need a user whom permission bits bind: as root (CI) they run in a
child process without root's power over file permissions (helpers.main_without_root_file_powers);
the `/proc` cases are refused for root too (the writability check writes a probe file, it does
not trust access bits). `fault` cases inject an OSError (a full disk) into the write itself.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from helpers import main_without_root_file_powers, tiny_spec
from scrutable.cli import main
from scrutable.sweep.spec import spec_from_mapping

DATA = Path(os.environ["SCRUTABLE_DATA_DIR"])
TINY = ["--model", "tiny-gpt2", "--scorer", "tiny-gpt2"]
SPEC = tiny_spec()


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    expect: str  # a fragment of the one error line
    setup: Callable[[Path], None] | None = None
    unwritable: bool = False
    fault: int | None = None  # an errno raised by every atomic rename (os.replace in scrutable.paths)
    env: tuple[tuple[str, str], ...] = ()


def spec_file(name: str = "spec.yaml", **changes: object) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        values = {**SPEC, "storage": str(root / "runs"), **changes}
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(yaml.safe_dump({k: v for k, v in values.items() if v is not None}))

    return make


def text_file(name: str, content: str | bytes) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return make


def tensor_file(name: str, value: object) -> Callable[[Path], None]:
    return lambda root: torch.save(value, root / name)


def both(*makers: Callable[[Path], None]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        for maker in makers:
            maker(root)

    return make


def data_copy(test_tsv: str) -> Callable[[Path], None]:
    """A data folder like ../shared/data whose SST-2 test split is `test_tsv`."""

    def make(root: Path) -> None:
        data = root / "data"
        shutil.copytree(DATA / "sst2" / "16-shot" / "13", data / "sst2" / "16-shot" / "13")
        (data / "tokenizers").symlink_to(DATA / "tokenizers")
        (data / "sst2" / "test.tsv").write_text(test_tsv)

    return make


def sweep_folder(stored: dict[str, object], signed: bool = False, drop: str | None = None) -> Callable[[Path], None]:
    """runs/t holding a stored spec and a (fake) Tune state, as an interrupted sweep leaves it."""

    def make(root: Path) -> None:
        folder = root / "runs" / "t"
        (folder / "tune").mkdir(parents=True)
        written = spec_from_mapping({**SPEC, "storage": str(root / "runs"), **stored}, "spec").to_dict()
        written.pop(drop, None)  # a file cut short
        (folder / "spec.yaml").write_text(yaml.safe_dump(written))  # every field, as the driver writes it
        (folder / "tune" / "tuner.pkl").write_bytes(b"not really a pickle")
        (folder / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")

    return make


def empty_folder(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).mkdir()


def unwritable(name: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / name).mkdir()
        (root / name).chmod(0o500)

    return make


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(5)
)  # 10**6 values from ~300 bytes
LONG = "n" * 300  # one name over the 255-byte limit (ENAMETOOLONG)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


HTTP_PORT, SILENT_PORT = free_port(), free_port()


def not_ray(port: int, answer: bytes | None) -> Callable[[Path], None]:
    """A server on 127.0.0.1:port that is not Ray: it answers `answer` and closes, or (None)
    accepts and says nothing. Lives in a daemon thread for the rest of the test session."""

    def make(root: Path) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        held: list[socket.socket] = []

        def serve() -> None:
            while True:
                connection, _ = server.accept()
                if answer is None:
                    held.append(connection)
                else:
                    connection.recv(1024)
                    connection.sendall(answer)
                    connection.close()

        threading.Thread(target=serve, daemon=True).start()

    return make


def gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


EVALUATE = ["evaluate", "--task", "sst2", *TINY]
TRAIN = ["train", "--method", "pez", "--task", "sst2", *TINY, "--steps", "1"]
SWEEP = ["sweep", "spec.yaml"]
CASES = [
    # --- evaluate ------------------------------------------------------------------------
    Case("eval-unknown-task", ["evaluate", "--task", "sst3", *TINY, "--prompt", "x"], "unknown task 'sst3'"),
    Case("eval-missing-model-dir", [*EVALUATE[:3], "--model", "./nope", "--prompt", "x"], "does not exist"),
    Case("eval-offline-hub-model", [*EVALUATE[:3], "--model", "distilgpt2", "--prompt", "x"], "could not load"),
    Case("eval-missing-soft-prompt", [*EVALUATE, "--soft-prompt", "p.pt"], "does not exist"),
    Case("eval-soft-prompt-not-torch", [*EVALUATE, "--soft-prompt", "p.pt"], "not a torch", text_file("p.pt", "hi")),
    Case(
        "eval-soft-prompt-wrong-width",
        [*EVALUATE, "--soft-prompt", "p.pt"],
        "width 7",
        tensor_file("p.pt", torch.zeros(3, 7)),
    ),
    Case(
        "eval-soft-prompt-0-rows",
        [*EVALUATE, "--soft-prompt", "p.pt"],
        "0 vectors",
        tensor_file("p.pt", torch.zeros(0, 32)),
    ),
    Case(
        "eval-soft-prompt-nan",
        [*EVALUATE, "--soft-prompt", "p.pt"],
        "NaN",
        tensor_file("p.pt", torch.full((2, 32), float("nan"))),
    ),
    Case("eval-soft-prompt-1d", [*EVALUATE, "--soft-prompt", "p.pt"], "(L, D)", tensor_file("p.pt", torch.zeros(32))),
    Case("eval-prompt-too-long", [*EVALUATE, "--prompt", "word " * 2000], "too long"),
    Case("eval-empty-prompt", [*EVALUATE, "--prompt", ""], "empty"),
    Case("eval-prompt-lone-surrogate", [*EVALUATE, "--prompt", "bad \udcff byte"], "not UTF-8 text"),
    Case("eval-limit-0", [*EVALUATE, "--prompt", "x", "--limit", "0"], "--limit"),
    Case("eval-json-is-a-folder", [*EVALUATE, "--prompt", "x", "--json", "out"], "is a folder", unwritable("out")),
    Case(
        "eval-json-under-a-file", [*EVALUATE, "--prompt", "x", "--json", "f/card.json"], "is a file", text_file("f", "")
    ),
    Case(
        "eval-json-unwritable",
        [*EVALUATE, "--prompt", "x", "--json", "ro/card.json"],
        "not writable",
        unwritable("ro"),
        unwritable=True,
    ),
    Case("eval-bad-split", [*EVALUATE, "--prompt", "x", "--split", "val"], "invalid choice"),
    Case("eval-missing-task", ["evaluate", *TINY, "--prompt", "x"], "--task"),
    Case(
        "eval-prompt-and-soft-prompt",
        [*EVALUATE, "--prompt", "x", "--soft-prompt", "p.pt"],
        "not allowed with argument",
    ),
    Case("eval-missing-data-dir", [*EVALUATE, "--prompt", "x", "--data-dir", "nodata"], "nodata"),
    Case(
        "eval-tsv-row-without-label",
        [*EVALUATE, "--prompt", "x", "--data-dir", "data", "--split", "test"],
        "line 3 has no 'label'",
        data_copy("sentence\tlabel\ngood film\t1\nbad film\n"),
    ),
    Case(
        "eval-tsv-label-outside-classes",
        [*EVALUATE, "--prompt", "x", "--data-dir", "data", "--split", "test"],
        "label '2' outside",
        data_copy("sentence\tlabel\ngood film\t1\nbad film\t2\n"),
    ),
    Case("eval-seed-without-split", [*EVALUATE, "--prompt", "x", "--seed", "5"], "seed 5"),
    Case("eval-bad-distance", [*EVALUATE, "--prompt", "x", "--distance", "l1"], "invalid choice"),
    Case(
        "eval-soft-prompt-inf",
        [*EVALUATE, "--soft-prompt", "p.pt"],
        "infinite",
        tensor_file("p.pt", torch.full((2, 32), float("inf"))),
    ),
    Case(
        "eval-soft-prompt-3e38-overflows",
        [*EVALUATE, "--soft-prompt", "p.pt"],
        "too large for float32",
        tensor_file("p.pt", torch.full((2, 32), 3e38)),
    ),
    Case("eval-json-in-proc", [*EVALUATE, "--prompt", "x", "--json", "/proc/card.json"], "cannot be created"),
    Case("eval-json-a-device", [*EVALUATE, "--prompt", "x", "--json", "/dev/null"], "not a regular file"),
    Case("eval-json-name-too-long", [*EVALUATE, "--prompt", "x", "--json", f"{LONG}.json"], "not a usable path"),
    Case(
        "eval-json-disk-full",
        [*EVALUATE, "--prompt", "x", "--limit", "2", "--json", "card.json"],
        "no space left",
        fault=errno.ENOSPC,
    ),
    Case(
        "eval-json-read-only-file-system",
        [*EVALUATE, "--prompt", "x", "--limit", "2", "--json", "card.json"],
        "read-only file system",
        fault=errno.EROFS,
    ),
    Case(
        "eval-json-permission-denied-at-write",
        [*EVALUATE, "--prompt", "x", "--limit", "2", "--json", "card.json"],
        "permission denied",
        fault=errno.EACCES,
    ),
    Case(
        "eval-tsv-missing-sentence-column",
        [*EVALUATE, "--prompt", "x", "--data-dir", "data", "--split", "test"],
        "no 'sentence' column",
        data_copy("text\tlabel\ngood film\t1\n"),
    ),
    Case(
        "eval-tsv-row-with-extra-field",
        [*EVALUATE, "--prompt", "x", "--data-dir", "data", "--split", "test"],
        "line 3 has more than 2",
        data_copy("sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n"),
    ),
    # --- train ---------------------------------------------------------------------------
    Case("train-unknown-method", ["train", "--method", "pzz", "--task", "sst2", *TINY], "unknown method 'pzz'"),
    Case("train-unknown-set-key", [*TRAIN, "--set", "learning_rat=0.1"], "did you mean 'learning_rate'"),
    Case("train-set-bad-type", [*TRAIN, "--set", "batch_size=abc"], "batch_size must be an integer"),
    Case("train-set-without-equals", [*TRAIN, "--set", "batch_size"], "key=value"),
    Case("train-steps-0", [*TRAIN[:-1], "0"], "steps must be positive"),
    Case("train-negative-alpha", [*TRAIN, "--alpha", "-1"], "alpha must be"),
    Case("train-prompt-length-5000", [*TRAIN, "--prompt-length", "5000"], "too long"),
    Case("train-out-is-a-file", [*TRAIN, "--out", "f"], "is a file", text_file("f", "")),
    Case("train-out-under-a-file", [*TRAIN, "--out", "f/run"], "is a file", text_file("f", "")),
    Case("train-out-unwritable", [*TRAIN, "--out", "ro/run"], "not writable", unwritable("ro"), unwritable=True),
    Case(
        "train-overflow-is-divergence",
        [*TRAIN, "--set", "learning_rate=1e38", "--set", "eval_limit=2", "--set", "test_limit=2"],
        "overflowed",
    ),
    Case("train-unknown-task", ["train", "--method", "pez", "--task", "imdb", *TINY], "unknown task 'imdb'"),
    Case("train-out-in-proc", [*TRAIN, "--out", "/proc/run"], "cannot be created"),
    Case("train-out-name-too-long", [*TRAIN, "--out", LONG], "not a usable path"),
    # --- sweep ---------------------------------------------------------------------------
    Case("sweep-missing-file", SWEEP, "does not exist"),
    Case("sweep-not-utf8", SWEEP, "not UTF-8", text_file("spec.yaml", b"name: t\nmethod: \xff\xfe\n")),
    Case("sweep-bad-yaml", SWEEP, "not valid YAML at line", text_file("spec.yaml", "name: t\nsearch: [\n")),
    Case(
        "sweep-duplicate-key",
        SWEEP,
        "duplicate key 'trials'",
        text_file("spec.yaml", "name: t\ntrials: 2\ntrials: 3\n"),
    ),
    Case("sweep-not-a-mapping", SWEEP, "must be a mapping", text_file("spec.yaml", "- a\n- b\n")),
    Case("sweep-misspelled-key", SWEEP, "did you mean 'trials'", spec_file(trials=None, trails=2)),
    Case("sweep-unknown-task", SWEEP, "unknown task 'sst3'", spec_file(task="sst3")),
    Case("sweep-unknown-method", SWEEP, "unknown method 'pzz'", spec_file(method="pzz")),
    Case("sweep-missing-model-dir", SWEEP, "does not exist", spec_file(model="./no-such-model")),
    Case("sweep-uncached-hub-model", SWEEP, "not in the local cache", spec_file(scorer="distilgpt2")),
    Case("sweep-bad-model-name", SWEEP, "neither a built-in name", spec_file(model="tiny gpt2!")),
    Case("sweep-negative-max-failures", SWEEP, "max_failures must be >= 0", spec_file(max_failures=-1)),
    Case("sweep-zero-cpu", SWEEP, "resources.cpu must be a positive", spec_file(resources={"cpu": 0})),
    Case("sweep-zero-max-batch", SWEEP, "max_batch must be at least 1", spec_file(scorer_resources={"max_batch": 0})),
    Case(
        "sweep-grid-points-1",
        SWEEP,
        "grid_points must be at least 2",
        spec_file(sampler="grid", search={"alpha": {"low": 0.1, "high": 1.0, "grid_points": 1}}),
    ),
    Case("sweep-zero-trials", SWEEP, "trials and concurrency", spec_file(trials=0)),
    Case("sweep-low-above-high", SWEEP, "low < high", spec_file(search={"alpha": {"low": 2.0, "high": 1.0}})),
    Case("sweep-nan-bound", SWEEP, "finite", spec_file(search={"alpha": {"low": 0.0, "high": float("inf")}})),
    Case(
        "sweep-bad-prompt-length-value", SWEEP, "prompt_length", spec_file(search={"prompt_length": {"values": [3, 0]}})
    ),
    Case(
        "sweep-unknown-objective", SWEEP, "did you mean", spec_file(objectives=[{"metric": "task/acc", "mode": "max"}])
    ),
    Case("sweep-set-malformed-yaml", [*SWEEP, "--set", "search.alpha={low: 1"], "--set search.alpha", spec_file()),
    Case("sweep-set-unknown-key", [*SWEEP, "--set", "trails=3"], "did you mean 'trials'", spec_file()),
    Case("sweep-set-into-a-scalar", [*SWEEP, "--set", "trials.x=3"], "not a mapping", spec_file()),
    Case("sweep-storage-is-a-file", [*SWEEP, "--set", "storage=f"], "is a file", both(spec_file(), text_file("f", ""))),
    Case(
        "sweep-storage-unwritable",
        [*SWEEP, "--set", "storage=ro"],
        "not writable",
        both(spec_file(), unwritable("ro")),
        unwritable=True,
    ),
    Case(
        "sweep-tracking-server-down",
        [*SWEEP, "--set", "tracking.uri=http://127.0.0.1:9"],
        "is unreachable",
        spec_file(),
    ),
    Case("sweep-nothing-to-resume", [*SWEEP, "--resume"], "nothing to resume", spec_file()),
    Case("sweep-folder-without-resume", ["sweep", "runs/t"], "pass --resume", sweep_folder({})),
    Case("sweep-trust-without-resume", [*SWEEP, "--trust-folder"], "only applies with --resume", spec_file()),
    Case(
        "sweep-resume-other-spec",
        [*SWEEP, "--resume"],
        "method, trials differ",
        both(spec_file(), sweep_folder({"method": "soft_prompt", "trials": 5})),
    ),
    # Every end of every searched range, not one example point.
    Case(
        "sweep-alpha-low-negative",
        SWEEP,
        "search.alpha in spec.yaml reaches -5.0",
        spec_file(search={"alpha": {"low": -5.0, "high": 1.0}}),
    ),
    Case(
        "sweep-prompt-length-range-from-0",
        SWEEP,
        "search.prompt_length in spec.yaml reaches 0",
        spec_file(search={"prompt_length": {"low": 0, "high": 8, "integer": True}}),
    ),
    Case(
        "sweep-prompt-length-5000",
        SWEEP,
        "prompt_length 5000 in spec.yaml is too long for tiny-gpt2",
        spec_file(search={"prompt_length": {"values": [3, 5000]}}),
    ),
    Case(
        "sweep-prompt-length-range-to-5000",
        SWEEP,
        "too long for tiny-gpt2",
        spec_file(search={"prompt_length": {"low": 2, "high": 5000, "integer": True}}),
    ),
    Case(
        "sweep-learning-rate-from-0",
        SWEEP,
        "learning_rate must be positive",
        spec_file(search={"learning_rate": {"low": 0.0, "high": 0.1}}),
    ),
    Case("sweep-seed-negative", SWEEP, "seed must be in [0, 2**32)", spec_file(seed=-1)),
    Case("sweep-seed-2-40", SWEEP, "seed must be in [0, 2**32)", spec_file(seed=2**40)),
    Case(
        "sweep-searched-seed-2-40",
        SWEEP,
        "outside [0, 2**32)",
        spec_file(search={"alpha": SPEC["search"]["alpha"], "seed": {"values": [0, 2**40]}}),
    ),
    Case("sweep-name-300-chars", [*SWEEP, "--set", f"name={'n' * 300}"], "more than 100", spec_file()),
    Case(
        "sweep-grid-points-1e7",
        SWEEP,
        "grid_points must be at least 2 and at most 1000",
        spec_file(sampler="grid", search={"alpha": {"low": 0.1, "high": 1.0, "grid_points": 10**7}}),
    ),
    Case(
        "sweep-grid-too-large",
        SWEEP,
        "more than 100000",
        spec_file(
            sampler="grid",
            search={
                "alpha": {"low": 0.1, "high": 1.0, "grid_points": 1000},
                "seed": {"values": list(range(200))},
            },
        ),
    ),
    Case("sweep-optuna-unknown-scheme", SWEEP, "not a database URL", spec_file(optuna_storage="redis://x/0")),
    Case("sweep-optuna-plain-path", SWEEP, "not a database URL", spec_file(optuna_storage="optuna.db")),
    Case("sweep-optuna-in-memory", SWEEP, "in memory", spec_file(optuna_storage="sqlite://")),
    Case("sweep-optuna-in-proc", SWEEP, "cannot be created", spec_file(optuna_storage="sqlite:////proc/x/optuna.db")),
    Case(
        "sweep-optuna-unwritable",
        SWEEP,
        "cannot be created",
        both(spec_file(optuna_storage="sqlite:///ro/optuna.db"), unwritable("ro")),
        unwritable=True,
    ),
    Case("sweep-experiment-dotdot", SWEEP, "no '/' or '..'", spec_file(tracking={"experiment": ".."})),
    Case("sweep-experiment-a-path", SWEEP, "no '/' or '..'", spec_file(tracking={"experiment": "a/b"})),
    Case("sweep-cpu-1e6", SWEEP, "more than this machine's", spec_file(resources={"cpu": 1e6})),
    Case(
        "sweep-gpu-beyond-this-machine",
        SWEEP,
        "more than this machine's",
        spec_file(resources={"cpu": 1, "gpu": gpus() + 1}),
    ),
    Case(
        "sweep-scorer-gpu-beyond-this-machine",
        SWEEP,
        "scorer_resources.gpu",
        spec_file(scorer_resources={"gpu": gpus() + 1}),
    ),
    Case("sweep-alias-bomb", SWEEP, "expands to more than 10000", text_file("spec.yaml", BOMB)),
    Case(
        "sweep-recursive-alias",
        SWEEP,
        "refers to itself",
        text_file("spec.yaml", "name: &a [t, *a]\n"),
    ),
    Case("sweep-out-proc", [*SWEEP, "--out", "/proc"], "not writable", spec_file()),
    Case("sweep-out-name-too-long", [*SWEEP, "--out", f"runs/{LONG}"], "more than 100", spec_file()),
    Case(
        "sweep-data-unknown-label",
        [*SWEEP, "--set", "data_dir=data"],
        "label '2' outside",
        both(spec_file(), data_copy("sentence\tlabel\ngood film\t2\n")),
    ),
    Case(
        "sweep-data-not-utf8",
        [*SWEEP, "--set", "data_dir=data"],
        "not UTF-8",
        both(spec_file(), data_copy("sentence\tlabel\ngood film\t1\n"), text_file("data/sst2/test.tsv", b"\xff\n")),
    ),
    Case(
        "sweep-address-is-a-web-server",
        [*SWEEP, "--address", f"127.0.0.1:{HTTP_PORT}"],
        "is not a Ray cluster",
        both(spec_file(), not_ray(HTTP_PORT, b"HTTP/1.1 400 Bad Request\r\n\r\n")),
    ),
    Case(
        "sweep-ray-address-env-is-a-silent-port",
        SWEEP,
        "is not a Ray cluster",
        both(spec_file(), not_ray(SILENT_PORT, None)),
        env=(("RAY_ADDRESS", f"127.0.0.1:{SILENT_PORT}"),),
    ),
    Case("sweep-address-without-port", [*SWEEP, "--address", "10.0.0.5"], "has no port", spec_file()),
    Case("sweep-empty-folder", ["sweep", "empty"], "not a sweep folder", empty_folder("empty")),
    Case("sweep-empty-folder-resume", ["sweep", "empty", "--resume"], "not a sweep folder", empty_folder("empty")),
    Case(
        "sweep-resume-folder-with-out",
        ["sweep", "runs/t", "--resume", "--out", "elsewhere"],
        "--out does not apply",
        sweep_folder({}),
    ),
    Case(
        "sweep-resume-truncated-spec",
        ["sweep", "runs/t", "--resume"],
        "not valid YAML",
        both(sweep_folder({}), text_file("runs/t/spec.yaml", "name: t\nsearch: {alpha: {low: 0.01, hi")),
    ),
    Case(
        "sweep-resume-spec-cut-short",
        ["sweep", "runs/t", "--resume"],
        "lacks trials",
        sweep_folder({}, drop="trials"),
    ),
    Case("sweep-resume-unsigned-folder", ["sweep", "runs/t", "--resume"], "not", sweep_folder({})),
    Case(
        "sweep-resume-renamed-folder", ["sweep", "runs/t", "--resume"], "rename the folder", sweep_folder({"name": "u"})
    ),
    # --- pareto --------------------------------------------------------------------------
    Case("pareto-not-a-sweep-folder", ["pareto", "."], "not a sweep folder"),
    Case("pareto-missing-folder", ["pareto", "nope"], "not a sweep folder"),
    Case("pareto-no-tune-results", ["pareto", "runs/t"], "does not exist", spec_file("runs/t/spec.yaml")),
    Case(
        "pareto-out-is-a-file",
        ["pareto", "runs/t", "--out", "f"],
        "is a file",
        both(sweep_folder({}), text_file("f", "")),
    ),
    Case(
        "pareto-reference-inf",
        ["pareto", "runs/t", "--reference", "task/dev_objective=inf", "--reference", "interp/perplexity=1"],
        "finite number",
        sweep_folder({}),
    ),
    Case("pareto-out-in-proc", ["pareto", "runs/t", "--out", "/proc/pareto"], "cannot be created", sweep_folder({})),
    Case("pareto-out-name-too-long", ["pareto", "runs/t", "--out", LONG], "not a usable path", sweep_folder({})),
    # --- report --------------------------------------------------------------------------
    Case("report-out-in-proc", ["report", "runs/t", "--out", "/proc/results.md"], "cannot be created"),
    Case("report-out-name-too-long", ["report", "runs/t", "--out", f"{LONG}.md"], "not a usable path"),
    Case(
        "pareto-bad-spec",
        ["pareto", "runs/t"],
        "not valid YAML",
        text_file("runs/t/spec.yaml", "name: [\n"),
    ),
]


PROGRESS = re.compile(r"\|.*\[\d\d:\d\d")  # a tqdm bar: "pez:  0%|   | 0/1 [00:00<?, ?step/s]"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and mtime, and every folder (whose mtime a deleted probe file moves)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0)
        for p in sorted(root.rglob("*"))
        if not p.is_symlink()
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    if case.unwritable and os.geteuid() == 0:  # root may write anywhere: run it as an ordinary user would
        monkeypatch.setitem(globals(), "main", main_without_root_file_powers)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRUTABLE_STATE_KEY", str(tmp_path / "key" / "state.key"))
    monkeypatch.setenv("SCRUTABLE_DATA_DIR", str(DATA))
    for name, value in case.env:
        monkeypatch.setenv(name, value)
    if case.setup is not None:
        case.setup(tmp_path)
    if case.fault is not None:
        code = case.fault

        def full_disk(source: object, target: object) -> None:
            raise OSError(code, os.strerror(code), str(target))

        monkeypatch.setattr("scrutable.paths.os.replace", full_disk)
    before = snapshot(tmp_path)
    try:
        code = main(case.argv)
    finally:
        for path in tmp_path.rglob("*"):  # let pytest clean up read-only folders
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o700)
    err = capsys.readouterr().err
    # A run that fails mid-training shows its progress bar first (tqdm, \r-separated).
    pieces = [piece for line in err.splitlines() for piece in line.split("\r")]
    lines = [piece for piece in pieces if piece.strip() and not PROGRESS.search(piece)]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("scrutable: error: "), err
    assert "Traceback" not in err
    assert case.expect in lines[0], lines[0]
    after = snapshot(tmp_path)
    assert after == before, sorted(set(after) ^ set(before))


def test_the_table_covers_every_command_with_at_least_40_cases():
    commands = {c.argv[0] for c in CASES}
    assert {"evaluate", "train", "sweep", "pareto", "report"} <= commands
    assert len(CASES) >= 100
