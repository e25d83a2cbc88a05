"""Reduced precision: every method runs in bfloat16 on the CPU, and its numbers stay close
to float32's.

Tiny models (fast): each registered method's `run()` for a few steps with
`device=cpu, dtype=bfloat16` (what `--set device=cpu --set dtype=bfloat16` gives) reports
finite metrics, keeps its trainable parameters in float32 and its frozen models in bfloat16.

SmolLM2-135M (`slow`, `smollm`): bfloat16 against float32 on the same real weights, for the
perplexity of fixed prompts, the dev objective of a fixed prompt and the nearest-token
projection of a trained soft prompt. Measured differences and the tolerances are stated
beside each assertion.
"""

import math

import pytest
import torch

from helpers import TINY_METHOD_EXTRA, TINY_METHOD_SETTINGS
from scrutable.config import from_mapping
from scrutable.metrics import keys
from scrutable.trainables import METHODS, get_method
from scrutable.trainables.common import config_model

BFLOAT16 = {**TINY_METHOD_SETTINGS, "steps": 2, "device": "cpu", "dtype": "bfloat16"}


def make_config(name, **changes):
    # Strings, as `--set key=value` delivers them: the config coerces and checks them.
    values = {**BFLOAT16, **TINY_METHOD_EXTRA[name], **changes}
    return from_mapping(get_method(name).config_cls, {k: str(v) for k, v in values.items()})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_bfloat16_runs_every_method_with_finite_metrics(name):
    config = make_config(name)
    assert config.dtype == "bfloat16" and config.device == "cpu"
    reports = []
    result = get_method(name).run(config, report=reports.append)
    assert config_model(config, "tiny-gpt2").dtype == torch.bfloat16
    for key in (
        keys.TASK_DEV_OBJECTIVE,
        keys.TASK_TEST,
        keys.TASK_TEST_OBJECTIVE,
        keys.PERPLEXITY,
        *keys.FAITHFULNESS,
    ):
        assert math.isfinite(result.metrics[key]), (key, result.metrics[key])
    assert math.isfinite(reports[-1].metrics[keys.TRAIN_LOSS])
    assert result.metrics[keys.PERPLEXITY] > 1
    # The trained parts stay float32 (bfloat16 would round Adam's small steps away).
    trained = [v for k, v in result.state.items() if k in ("prompt",) and isinstance(v, torch.Tensor)]
    trained += list(result.state.get("mlp", {}).values())
    assert trained and all(t.dtype == torch.float32 for t in trained)


def test_float16_runs_soft_prompt_tuning():
    result = get_method("soft_prompt").run(make_config("soft_prompt", dtype="float16"))
    assert math.isfinite(result.metrics[keys.TASK_TEST_OBJECTIVE]) and math.isfinite(result.metrics[keys.PERPLEXITY])


def test_unknown_dtype_and_device_name_the_choices():
    from scrutable.errors import UserError

    with pytest.raises(UserError, match="dtype must be one of float32, bfloat16, float16"):
        make_config("pez", dtype="half")
    with pytest.raises(UserError, match="device must be one of auto, cpu, cuda"):
        make_config("pez", device="gpu")


# ---------------------------------------------------------------------------------------
# SmolLM2-135M: bfloat16 against float32 on the same real weights
# ---------------------------------------------------------------------------------------

PROBE_TEXTS = (
    " All in all, the movie was",
    " The film is a masterpiece of modern cinema.",
    " terrible acting and a boring plot",
    " It was",
)


@pytest.fixture(scope="module")
def smollm_bf16():
    from scrutable.models import load_model

    return load_model("smollm2-135m", device="cpu", dtype="bfloat16")


@pytest.mark.slow
@pytest.mark.smollm
def test_bfloat16_perplexity_and_dev_objective_are_close_to_float32(smollm, smollm_bf16, data_dir):
    from scrutable.metrics.perplexity import sequence_perplexities
    from scrutable.tasks import get_task
    from scrutable.tasks.inputs import token_ids

    assert smollm.dtype == torch.float32 and smollm_bf16.dtype == torch.bfloat16
    ids = [token_ids(smollm, text) for text in PROBE_TEXTS]
    full = [math.log(p) for p, _ in sequence_perplexities(smollm, ids)]
    half = [math.log(p) for p, _ in sequence_perplexities(smollm_bf16, ids)]
    # Measured |log-perplexity difference| (nats, 2 cores, torch 2.13): 0.016, 0.014, 0.003 and
    # 0.053 (" It was": 2 tokens, no averaging). Tolerance 0.1 nats: 10% in perplexity.
    assert max(abs(a - b) for a, b in zip(full, half, strict=True)) < 0.1, (full, half)

    task = get_task("sst2", data_dir=data_dir, seed=13)
    prompt = torch.tensor(token_ids(smollm, " All in all, the movie was"))
    dev_full = task.evaluate(smollm, smollm.embedding_matrix[prompt], "dev")
    dev_half = task.evaluate(smollm_bf16, smollm_bf16.embedding_matrix[prompt], "dev")
    # Measured on the 32 dev sentences: objective -1.2428 vs -1.2350 (0.0078), accuracy equal
    # (0.531). Tolerance 0.02 nats of mean log-probability; accuracy within one sentence.
    assert abs(dev_full.objective - dev_half.objective) < 0.02, (dev_full, dev_half)
    assert abs(dev_full.metric - dev_half.metric) <= 1 / 32 + 1e-9


@pytest.mark.slow
@pytest.mark.smollm
def test_bfloat16_nearest_tokens_and_chosen_prompt_match_float32(smollm, smollm_bf16, data_dir):
    from scrutable.metrics.unembed import Distance, nearest_tokens

    generator = torch.Generator().manual_seed(0)
    vocab = smollm.embedding_matrix
    # Vectors between two tokens (weights 0.4-0.6): where bfloat16's rounding of the
    # vocabulary could flip the nearest token, if anywhere.
    first, second = torch.randint(0, 5000, (2, 200), generator=generator)
    weight = torch.rand(200, 1, generator=generator) * 0.2 + 0.4
    soft = weight * vocab[first] + (1 - weight) * vocab[second]
    for distance in Distance:
        full = nearest_tokens(soft, smollm.embedding_matrix, distance)
        half = nearest_tokens(soft, smollm_bf16.embedding_matrix, distance)
        agree = float((full.token_ids == half.token_ids).float().mean())
        # Measured: all 200 agree for both distances; distances differ by at most 7.4e-4
        # (Euclidean) and 1.2e-4 (cosine). Tolerances: 97% agree, distances within 5e-3.
        assert agree >= 0.97, (distance, agree)
        assert float((full.distances - half.distances).abs().max()) < 5e-3

    # The prompt a short PEZ run keeps (alpha 0.3, 4 steps, SmolLM2 as task model and scorer).
    chosen = {}
    for dtype in ("float32", "bfloat16"):
        config = from_mapping(
            get_method("pez").config_cls,
            {
                "task": "sst2",
                "model": "smollm2-135m",
                "scorer": "smollm2-135m",
                "data_dir": str(data_dir),
                "prompt_length": 5,
                "steps": 4,
                "eval_interval": 2,
                "batch_size": 8,
                "eval_limit": 16,
                "test_limit": 32,
                "alpha": 0.3,
                "device": "cpu",
                "dtype": dtype,
            },
        )
        chosen[dtype] = get_method("pez").run(config).metrics
    full, half = chosen["float32"], chosen["bfloat16"]
    # Measured: the same 5 tokens (' understandynamda History technologies', kept at step 4),
    # dev objective -2.0693 vs -2.0629 (0.0064), perplexity 6.73e5 vs 7.24e5 (0.073 nats).
    # Tolerances: at least 4 of the 5 tokens equal, 0.02 in the dev objective, 0.15 nats.
    same = sum(a == b for a, b in zip(full[keys.PROMPT_TOKEN_IDS], half[keys.PROMPT_TOKEN_IDS], strict=True))
    assert same >= 4, (full[keys.PROMPT_TEXT], half[keys.PROMPT_TEXT])
    assert abs(full[keys.TASK_DEV_OBJECTIVE] - half[keys.TASK_DEV_OBJECTIVE]) < 0.02
    assert abs(math.log(full[keys.PERPLEXITY]) - math.log(half[keys.PERPLEXITY])) < 0.15
