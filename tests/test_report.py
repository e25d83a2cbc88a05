"""`scrutable report` on real smoke sweeps (tiny models): the tables hold the trials' own
numbers (recomputed here from Tune's result.json files, not through the report's reader),
the figures and Pareto copies exist, a rerun writes identical bytes and keeps the prose
under the comparison marker, the printed command rebuilds the recorded spec, and a folder
that is not a sweep is one error line with exit code 2."""

import csv
import json
import math
import os
import re
import shlex
import statistics
from pathlib import Path

import pytest
import ray

from scrutable.cli import main
from scrutable.report import PROSE_MARKER, write_report
from scrutable.sweep.launcher import run_sweep
from scrutable.sweep.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the first test pays for the six-trial fixture


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """A PEZ grid over alpha {0, 10} x seed {0, 1} and a soft-prompt grid over seed {0, 1}."""
    storage = tmp_path_factory.mktemp("runs")
    common = {"storage": str(storage), "data_dir": os.environ["SCRUTABLE_DATA_DIR"]}
    pez = {
        **common,
        "trials": "4",
        "search.alpha": "{values: [0.0, 10.0]}",
        "search.prompt_length": "{values: [2]}",
        "search.seed": "{values: [0, 1]}",
    }
    soft = {**common, "trials": "2", "search.prompt_length": "{values: [2]}", "search.seed": "{values: [0, 1]}"}
    try:
        for name, overrides in (("sst2_pez", pez), ("sst2_soft_prompt", soft)):
            spec = load_spec(REPO / "sweeps" / "results" / f"{name}.yaml", overrides, smoke=True)
            assert not run_sweep(spec)["interrupted"]
    finally:
        ray.shutdown()
    return storage / "sst2_pez", storage / "sst2_soft_prompt"


def last_results(folder):
    """{trial folder: (params, last result)} read straight from Tune's files."""
    out = {}
    for path in sorted(folder.glob("tune/*/result.json")):
        last = json.loads(path.read_text().splitlines()[-1])
        out[path.parent.name] = (json.loads((path.parent / "params.json").read_text()), last)
    return out


def table_rows(markdown, header_start):
    """The rows of the first table whose header starts with `header_start`, as cell lists."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [c.strip() for c in lines[start].strip("|").split("|")], rows


def table_after(markdown, heading):
    """The first table under the first line equal to `heading`: header cells and row cells."""
    lines = markdown.splitlines()
    start = next(i for i in range(lines.index(heading), len(lines)) if lines[i].startswith("|"))
    return table_rows("\n".join(lines[start:]), lines[start])


def quoted(text):
    """A prompt as a table cell shows it: JSON-quoted in backticks, pipes escaped."""
    return "`" + json.dumps(text, ensure_ascii=False).replace("`", "'").replace("|", "\\|") + "`"


def number(cell):
    return float(cell.replace("×", ""))


def mean_std(cell):
    mean, _, std = cell.partition(" ± ")
    return float(mean), float(std) if std else None


def check_cell(cell, values):
    mean, std = mean_std(cell)
    assert mean == pytest.approx(statistics.fmean(values), rel=1e-3, abs=1e-9)
    assert std == pytest.approx(statistics.stdev(values), rel=1e-3, abs=1e-3)


def outputs(out):
    return {p.relative_to(out.parent): p.read_bytes() for p in sorted(out.parent.rglob("*")) if p.is_file()}


def test_report_tables_plots_and_reruns(sweeps, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the report names sweep files relative to the repository
    pez, soft = sweeps
    out = tmp_path / "docs" / "results.md"
    write_report([pez, soft], out)
    text = out.read_text()

    # PEZ: every (alpha, L) row is the mean ± std over the two seeds of the trials' own results.
    header, rows = table_rows(text, "| alpha | L | n | perplexity")
    assert header[:4] == ["alpha", "L", "n", "perplexity"]
    trials = last_results(pez)
    assert len(trials) == 4 and len(rows) == 2
    for row in rows:
        alpha = float(row[0])
        mine = [last for params, last in trials.values() if params["alpha"] == alpha and params["prompt_length"] == 2]
        assert row[2] == "2" and len(mine) == 2
        check_cell(row[3], [r["interp/perplexity"] for r in mine])
        check_cell(row[4], [r["task/test_metric"] for r in mine])
        check_cell(row[5], [r["task/dev_objective"] for r in mine])
    assert [float(r[0]) for r in rows] == [0.0, 10.0]
    for last in (last for _, last in trials.values()):  # every trial's prompt is in the document
        assert json.dumps(last["prompt/text"], ensure_ascii=False).replace("|", "\\|") in text

    # The frontier table is pareto.csv, and pareto.csv is the non-dominated set of the trials'
    # own results (dev objective up, perplexity down), found here by brute force.
    with (pez / "pareto" / "pareto.csv").open(newline="") as handle:
        exported = list(csv.DictReader(handle))
    objectives = ["task/dev_objective", "interp/perplexity"]
    points = [(last[objectives[0]], last[objectives[1]], last["prompt/text"]) for _, last in trials.values()]
    # Only prompts that beat a coin and the empty prompt, which every trial measured (frontier.task_baseline).
    bar = max(-math.log(2), *(last["baseline/empty_prompt_dev_objective"] for _, last in trials.values()))
    points = [p for p in points if p[0] > bar]
    if not points:  # tiny random models rarely beat the baseline: the report says so
        assert exported == [] and f"No trial beats the baseline (task/dev_objective {bar:.4g}" in text
    else:
        header, frontier = table_after(text, "### Pareto frontier")
        first = header.index(objectives[0])
        assert header[first : first + 3] == [*objectives, "test accuracy"] and header[-1] == "prompt"
        in_table = sorted((row[-1], *(number(c) for c in row[first : first + 3])) for row in frontier)
        in_csv = sorted(
            (quoted(r["prompt_text"]), *(float(r[k]) for k in [*objectives, "task/test_metric"])) for r in exported
        )
        assert [row[0] for row in in_table] == [row[0] for row in in_csv] and len(in_table) >= 1
        for shown, stored in zip(in_table, in_csv, strict=True):
            assert shown[1:] == pytest.approx(stored[1:], rel=1e-3)

        def dominated(p):
            return any(q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1]) for q in points)

        assert sorted(quoted(p[2]) for p in points if not dominated(p)) == [row[0] for row in in_csv]
        shown_order = [number(row[first]) for row in frontier]
        assert shown_order == sorted(shown_order, reverse=True)  # best dev objective first

    # The comparison's numbers, recomputed: the test-accuracy difference of means at alpha=10
    # minus alpha=0 with its standard error, and the ratio of geometric-mean perplexities.
    by_alpha = {a: [last for params, last in trials.values() if params["alpha"] == a] for a in (0.0, 10.0)}
    accuracy = {a: [r["task/test_metric"] for r in rows_] for a, rows_ in by_alpha.items()}
    difference = statistics.fmean(accuracy[10.0]) - statistics.fmean(accuracy[0.0])
    error = math.sqrt(sum(statistics.variance(v) / len(v) for v in accuracy.values()))
    ratio = math.exp(
        statistics.fmean(math.log(r["interp/perplexity"]) for r in by_alpha[10.0])
        - statistics.fmean(math.log(r["interp/perplexity"]) for r in by_alpha[0.0])
    )
    found = re.search(
        r"alpha=10 minus at alpha=0: (\S+) ± (\S+) \(n=2 vs 2\); perplexity at alpha=10 / at alpha=0 "
        r"\(geometric means\): ×(\S+)\.",
        text,
    )
    assert found is not None, text[text.index("## Comparison") :]
    assert number(found.group(1)) == pytest.approx(difference, rel=1e-3, abs=1e-9)
    assert number(found.group(2)) == pytest.approx(error, rel=1e-3, abs=1e-9)
    assert number(found.group(3)) == pytest.approx(ratio, rel=1e-3)

    # The English-phrase reference comes from the folder's cache, computed with the scorer.
    cache = json.loads((pez / "reference_perplexity.json").read_text())
    assert cache["key"]["scorer"] == "tiny-gpt2" and cache["lengths"]["2"]["n"] == 100
    _, reference = table_rows(text, "| L | phrases |")
    assert reference[0][:2] == ["2", "100"]
    assert float(reference[0][2]) == pytest.approx(cache["lengths"]["2"]["median"], rel=1e-3)

    # Soft prompt: soft vs unembedded test metric and their difference, per length.
    _, soft_rows = table_rows(text, "| L | n | test accuracy, soft")
    soft_trials = [last for _, last in last_results(soft).values()]
    assert len(soft_rows) == 1 and soft_rows[0][:2] == ["2", "2"]
    check_cell(soft_rows[0][2], [r["task/test_metric"] for r in soft_trials])
    check_cell(soft_rows[0][3], [r["task/test_metric_unembedded"] for r in soft_trials])
    check_cell(soft_rows[0][4], [r["task/test_metric"] - r["task/test_metric_unembedded"] for r in soft_trials])

    assert "Smoke scale: tiny random models" in text
    assert "## Comparison with the paper" in text and "alpha=10 minus at alpha=0" in text
    for name in ("sst2_pez/alpha_tradeoff.png", "sst2_pez/curves.png", "sst2_soft_prompt/faithfulness.png"):
        path = tmp_path / "docs" / "results" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"(results/{name})" in text
    for name in ("pareto.csv", "pareto.json", "pareto.png"):
        assert (tmp_path / "docs" / "results" / "sst2_pez" / name).read_bytes() == (pez / "pareto" / name).read_bytes()

    # Rerun: the same bytes everywhere; prose under the marker survives.
    first = outputs(out)
    out.write_text(text + "\nThe lead's comparison.\n")
    write_report([pez, soft], out)
    second = outputs(out)
    assert second.pop(Path("results.md")).decode().endswith(PROSE_MARKER + "\n\nThe lead's comparison.\n")
    first.pop(Path("results.md"))
    assert second == first
    write_report([pez, soft], out)
    assert out.read_text() == text + "\nThe lead's comparison.\n"


def test_printed_command_rebuilds_the_recorded_spec(sweeps, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    pez, _ = sweeps
    out = tmp_path / "results.md"
    write_report([pez], out)
    block = re.search(r"```bash\n(scrutable sweep sweeps/.*?)\n# exact replay", out.read_text(), re.S)
    assert block is not None
    argv = shlex.split(block.group(1).replace("\\\n", " "))
    assert argv[:3] == ["scrutable", "sweep", "sweeps/results/sst2_pez.yaml"] and "--smoke" in argv
    sets = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")
    rebuilt = load_spec(REPO / argv[2], {**sets, "storage": str(pez.parent)}, smoke=True).to_dict()
    recorded = load_spec(pez / "spec.yaml").to_dict()
    machine = ("data_dir", "local_dir")
    assert {k: v for k, v in rebuilt.items() if k not in machine} == {
        k: v for k, v in recorded.items() if k not in machine
    }


def test_a_folder_that_is_not_a_sweep_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.md")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("scrutable: error: ") and "is not a sweep folder (no spec.yaml)" in err
    assert not (tmp_path / "r.md").exists()
