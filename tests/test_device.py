"""Device placement and dtype: how `auto`, `cpu` and `cuda` resolve (in a plain process and
in a Ray worker), the errors for a GPU that is not there, and `--device` / `--dtype` on the
command line. Runs on the CPU; the same code on a GPU is `benchmarks/gpu_check.py`."""

import json

import pytest
import torch

from scrutable.cli import main
from scrutable.errors import UserError
from scrutable.models import accumulation_dtype, load_model, resolve_device, resolve_dtype
from scrutable.sweep.placement import choose


def test_auto_is_the_visible_gpu_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_is_one_line_naming_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="torch sees no CUDA device.*use device cpu or auto"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="device must be auto, cpu or cuda"):
        resolve_device("tpu")


def test_dtypes_and_what_accumulates_in_float32():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    with pytest.raises(UserError, match="dtype must be one of float32, bfloat16, float16"):
        resolve_dtype("fp8")
    assert accumulation_dtype(torch.bfloat16) is torch.float32 and accumulation_dtype(torch.float16) is torch.float32
    assert accumulation_dtype(torch.float64) is torch.float64


def test_load_model_places_weights_in_the_dtype(data_dir):
    lm = load_model("tiny-gpt2", data_dir=data_dir, device="cpu", dtype="bfloat16")
    assert lm.device == torch.device("cpu") and lm.dtype == torch.bfloat16
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}


def test_a_ray_worker_uses_the_gpu_it_reserved_and_its_cpus_as_threads():
    """The rule `sweep/placement.py` applies with what Ray reports to the worker."""
    assert choose("auto", [], None, "the trial").device == "cpu"  # no GPU reserved: never take one
    assert choose("auto", ["3"], 4.0, "the trial") == choose("cuda", [3], 4.0, "the trial")
    assert choose("auto", ["3"], 4.0, "the trial").device == "cuda"
    assert choose("cpu", ["0"], 2.0, "the trial").device == "cpu"  # asked for the CPU: stays there
    # A reserved GPU torch cannot use (CPU torch, a logical GPU): auto stays on the CPU.
    assert choose("auto", ["0"], 1.0, "the trial", cuda_available=False).device == "cpu"
    assert [choose("auto", [], cpus, "x").threads for cpus in (None, 0, 0.5, 1, 2.7, 8)] == [1, 1, 1, 1, 2, 8]
    with pytest.raises(UserError, match="the trial asks for device cuda but reserves no GPU"):
        choose("cuda", [], 1.0, "the trial")


@pytest.mark.slow
def test_place_worker_inside_ray_reads_the_reserved_gpu_and_cpus():
    """A real Ray worker that reserved 1 GPU and 2 CPUs sees the GPU Ray assigned and runs 2
    torch threads; one that reserved none sees no GPU and runs 1 thread. The GPU is a logical
    resource here (this machine has none), so auto stays on the CPU, as `choose` rules."""
    import ray

    from scrutable.sweep.placement import place_worker

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:

        def where() -> tuple[str, int, list]:
            placement = place_worker("auto", "test")
            return placement.device, torch.get_num_threads(), ray.get_gpu_ids()

        with_gpu = ray.remote(num_cpus=2, num_gpus=1)(where)
        without = ray.remote(num_cpus=0)(where)
        assert ray.get(with_gpu.remote()) == ("cuda" if torch.cuda.is_available() else "cpu", 2, [0])
        assert ray.get(without.remote()) == ("cpu", 1, [])
    finally:
        ray.shutdown()


def test_train_takes_device_and_dtype_flags(tmp_path, capsys, data_dir):
    out = tmp_path / "run"
    argv = ["train", "--method", "pez", "--task", "sst2", "--model", "tiny-gpt2", "--scorer", "tiny-gpt2"]
    argv += ["--data-dir", str(data_dir), "--steps", "2", "--prompt-length", "3", "--device", "cpu"]
    argv += ["--dtype", "bfloat16", "--set", "batch_size=4", "--set", "eval_limit=4", "--set", "test_limit=4"]
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["interp/perplexity"] > 1 and 0 <= metrics["task/test_metric"] <= 1
    capsys.readouterr()


def test_evaluate_on_cuda_without_a_gpu_is_one_line(capsys, data_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["evaluate", "--task", "sst2", "--model", "tiny-gpt2", "--scorer", "tiny-gpt2", "--data-dir", str(data_dir)]
    code = main([*argv, "--prompt", " great movie", "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "torch sees no CUDA device" in err[0], err


def test_evaluate_in_bfloat16_is_close_to_float32(capsys, data_dir, tmp_path):
    cards = {}
    for dtype in ("float32", "bfloat16"):
        argv = ["evaluate", "--task", "sst2", "--model", "tiny-gpt2", "--scorer", "tiny-gpt2"]
        argv += ["--data-dir", str(data_dir), "--prompt", " great movie", "--limit", "16", "--dtype", dtype]
        assert main([*argv, "--json", str(tmp_path / f"{dtype}.json")]) == 0
        cards[dtype] = json.loads((tmp_path / f"{dtype}.json").read_text())
    capsys.readouterr()
    # tiny-gpt2's random weights give near-uniform outputs: perplexity ~ vocabulary size, and
    # bfloat16's 8-bit mantissa moves log-probabilities of ~-10.8 by a few hundredths.
    assert [t["token_id"] for t in cards["bfloat16"]["tokens"]] == [t["token_id"] for t in cards["float32"]["tokens"]]
    ratio = cards["bfloat16"]["perplexity"] / cards["float32"]["perplexity"]
    assert 0.9 < ratio < 1.1, ratio
