"""The sweep's terminal progress: one line per event off a terminal, an in-place table on one,
with elapsed time, steps done/total and an estimate of the time left."""

import io
import os
import re

from rich.console import Console

from scrutable.metrics import keys
from scrutable.sweep.progress import SweepProgress
from scrutable.sweep.spec import load_spec

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def spec(tmp_path):
    values = {"storage": str(tmp_path), "data_dir": os.environ["SCRUTABLE_DATA_DIR"], "trials": "2"}
    return load_spec(REPO / "sweeps" / "quickstart.yaml", values, smoke=True)


def events(progress, clock):
    progress.start()
    progress.trial_started("a1", {"alpha": 0.0, "prompt_length": 3})
    clock.now += 10
    progress.trial_result("a1", {}, {keys.PROGRESS_STEP: 1})  # a step report: no line of its own
    clock.now += 10
    progress.trial_result("a1", {}, {keys.TRAIN_STEP: 2, keys.TASK_DEV_OBJECTIVE: 0.5, keys.PERPLEXITY: 1234.5})
    progress.trial_completed("a1", {})
    progress.trial_started("b2", {"alpha": 0.3, "prompt_length": 6})
    clock.now += 5
    progress.trial_failed("b2", {}, "ValueError: boom")
    progress.stop()


def test_one_line_per_event_when_not_a_terminal(tmp_path):
    out, clock = io.StringIO(), Clock()
    progress = SweepProgress(spec(tmp_path), steps_per_trial=2, console=Console(file=out, width=300), clock=clock)
    events(progress, clock)
    first, *lines = out.getvalue().splitlines()
    assert first == "[     0s] first trial started"  # the start-up phases' last line, on the same clock
    assert len(lines) == 5, lines  # started, evaluated, done, started, failed; no step-report line
    assert all(not re.search(r"\x1b\[", line) for line in lines)  # plain text for logs
    assert "trial a1 started (alpha=0, L=3)" in lines[0]
    assert "trial a1 step 2: task/dev_objective=0.5, interp/perplexity=1234" in lines[1]
    # After 20 s, 2 of 4 steps: 20 s more at the same pace.
    assert lines[1].startswith("[    20s]") and "steps 2/4" in lines[1] and "ETA 20s" in lines[1]
    assert "1/2 trials done (0 failed)" in lines[2]
    assert "trial b2 failed: ValueError: boom" in lines[4]
    assert "2/2 trials done (1 failed), steps 4/4, elapsed 25s, ETA 0s" in lines[4]


def test_redrawn_in_place_on_a_terminal(tmp_path):
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, force_terminal=True, width=200, height=40)
    progress = SweepProgress(spec(tmp_path), steps_per_trial=2, console=console, clock=clock)
    events(progress, clock)
    text = out.getvalue()
    assert "\x1b[" in text  # cursor movement: the table is redrawn, not appended
    final = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "trial a1 started" not in final  # no event lines on a terminal
    assert "2/2 trials done (1 failed)" in final and "FAILED" in final and "DONE" in final


def test_eta_unknown_before_the_first_step(tmp_path):
    progress = SweepProgress(spec(tmp_path), steps_per_trial=8, console=Console(file=io.StringIO()))
    progress.trial_started("a1", {"alpha": 0.0, "prompt_length": 3})
    assert progress.eta_s() is None and "ETA ?" in progress.footer() and "steps 0/16" in progress.footer()


def test_live_table_clock_moves_between_events(tmp_path):
    """Every refresh renders anew: with no Tune event for 12 s the footer still says 12s."""
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, force_terminal=True, width=200, height=40)
    progress = SweepProgress(spec(tmp_path), steps_per_trial=2, console=console, clock=clock, started=clock.now - 3)
    progress.start()
    progress.trial_started("a1", {"alpha": 0.0, "prompt_length": 3})
    clock.now += 12  # no event in between: only the live display's own refresh
    progress.live.refresh()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    progress.stop()
    assert "[     3s] first trial started" in shown  # the command's clock, not the table's
    assert "elapsed 15s" in shown


def test_start_up_lines_share_the_command_clock_and_fit_80_columns(capsys):
    from scrutable.sweep.terminal import say

    clock = Clock()
    say(clock.now - 7, "loading the scorer smollm2-135m in the shared actor " + "x" * 60, clock=clock)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[     7s] loading the scorer smollm2-135m")
    assert len(lines) == 2 and all(len(line) <= 80 for line in lines)
