"""`scrutable evaluate`: the card's numbers against independent computations, and the
error paths (one line, exit code 2, no traceback)."""

import json
import subprocess
import sys

import pytest
import torch

from scrutable.cli import main
from scrutable.metrics import nearest_tokens, sequence_perplexities
from scrutable.tasks import get_task


def test_hard_prompt_card_matches_independent_numbers(tmp_path, capsys, tiny_gpt2, data_dir):
    out = tmp_path / "card.json"
    code = main(
        [
            "evaluate",
            "--task",
            "sst2",
            "--model",
            "tiny-gpt2",
            "--scorer",
            "tiny-gpt2",
            "--prompt",
            " It was",
            "--limit",
            "12",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    assert "Interpretability card" in capsys.readouterr().out
    card = json.loads(out.read_text())
    ids = tiny_gpt2.tokenizer(" It was", add_special_tokens=False)["input_ids"]
    assert [row["token_id"] for row in card["tokens"]] == ids
    task = get_task("sst2", data_dir=data_dir)
    accuracy = task.evaluate(tiny_gpt2, tiny_gpt2.embedding_matrix[ids], "dev", limit=12).metric
    assert card["metric_soft"] == card["metric_unembedded"] == pytest.approx(accuracy)
    assert card["perplexity"] == pytest.approx(sequence_perplexities(tiny_gpt2, [ids])[0][0], rel=1e-4)
    assert card["distance_differential"] < 1e-5 and card["output_mse"] == 0.0


def test_soft_prompt_card(tmp_path, tiny_gpt2, data_dir):
    soft = tiny_gpt2.embedding_matrix[torch.tensor([1169, 3807, 373, 922])] + 0.3 * torch.randn(4, 32)
    path = tmp_path / "prompt.pt"
    torch.save({"prompt": soft}, path)
    out = tmp_path / "card.json"
    assert (
        main(
            [
                "evaluate",
                "--task",
                "boolq",
                "--model",
                "tiny-gpt2",
                "--scorer",
                "tiny-gpt2",
                "--soft-prompt",
                str(path),
                "--limit",
                "8",
                "--distance",
                "cosine",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    card = json.loads(out.read_text())
    expected = nearest_tokens(soft, tiny_gpt2.embedding_matrix, "cosine")
    assert [r["token_id"] for r in card["tokens"]] == expected.token_ids.tolist()
    assert card["distance_differential"] == pytest.approx(expected.distance_differential, rel=1e-5)
    task = get_task("boolq", data_dir=data_dir)
    assert card["metric_soft"] == pytest.approx(task.evaluate(tiny_gpt2, soft, "dev", limit=8).metric)
    assert card["performance_differential"] == pytest.approx(abs(card["metric_soft"] - card["metric_unembedded"]))
    assert card["output_mse"] > 0


def test_t5_with_a_gpt2_scorer_retokenizes(tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                "--task",
                "boolq",
                "--model",
                "tiny-t5",
                "--scorer",
                "tiny-gpt2",
                "--prompt",
                "Answer the question",
                "--limit",
                "4",
            ]
        )
        == 0
    )
    assert "re-tokenised" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "sst3", "--prompt", "x"], "unknown task 'sst3': did you mean 'sst2'?"),
        (["--task", "sst2", "--soft-prompt", "/nonexistent.pt"], "does not exist"),
        (["--task", "sst2", "--prompt", "x", "--data-dir", "/nonexistent"], "data directory"),
        (["--task", "sst2", "--prompt", "x", "--limit", "0"], "--limit must be at least 1"),
        (["--task", "sst2"], "one of the arguments --prompt --soft-prompt is required"),
    ],
)
def test_user_errors_are_one_line(args, message, capsys):
    code = main(["evaluate", "--model", "tiny-gpt2", "--scorer", "tiny-gpt2", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_soft_prompt_files(tmp_path, capsys):
    wrong_width = tmp_path / "wide.pt"
    torch.save(torch.zeros(3, 64), wrong_width)
    not_torch = tmp_path / "text.pt"
    not_torch.write_text("hello")
    cases = [(wrong_width, "64 but the model's embeddings are 32"), (not_torch, "not a torch tensor file")]
    for path, message in cases:
        code = main(
            ["evaluate", "--task", "sst2", "--model", "tiny-gpt2", "--scorer", "tiny-gpt2", "--soft-prompt", str(path)]
        )
        assert code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.smollm
def test_console_script_on_smollm2(tmp_path):
    out = tmp_path / "card.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scrutable.cli",
            "evaluate",
            "--task",
            "sst2",
            "--model",
            "smollm2-135m",
            "--scorer",
            "smollm2-135m",
            "--prompt",
            " All in all, the movie was",
            "--split",
            "test",
            "--limit",
            "64",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    card = json.loads(out.read_text())
    assert card["split"] == "test" and card["examples"] == 64
    assert 1 < card["perplexity"] < 1e5 and 0 <= card["metric_soft"] <= 1
