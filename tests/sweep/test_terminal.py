"""Plain-text output: prompts quoted as the model reads them, lines wrapped at words."""

from scrutable.sweep.terminal import duration, fit, quote_prompt


def test_a_prompt_keeps_its_leading_space_and_is_cut_with_an_ellipsis():
    assert quote_prompt(" ADD unacceptablescrib", 40) == "' ADD unacceptablescrib'"
    cut = quote_prompt(" understandynamda History technical heart", 20)
    assert cut == "' understandynamda…'" and len(cut) == 20
    assert quote_prompt("a\nb\tc", 20) == "'a\\nb\\tc'"  # one line, control characters visible
    assert quote_prompt(None, 10) == "''"


def test_fit_wraps_at_words_and_never_cuts_one():
    text = "hypervolume 0.1234 w.r.t. reference (task/dev_objective=-0.8, interp/perplexity=4.2e+05; given)"
    lines = fit(text).splitlines()
    assert len(lines) == 2 and all(len(line) <= 80 for line in lines)
    assert " ".join(line.strip() for line in lines) == text  # nothing lost, nothing cut mid-word
    long_path = "/" + "a" * 100
    assert fit(f"files in {long_path}/: x").splitlines()[1].strip() == f"{long_path}/:"


def test_duration():
    assert [duration(s) for s in (0.4, 59, 61, 3661)] == ["0s", "59s", "1m01s", "1h01m"]
