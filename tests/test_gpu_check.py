"""`benchmarks/gpu_check.py` works without a GPU to prove it: its `--cpu-dry-run` runs the same
code on tiny models, in a Python where Ray, MLflow, Optuna and the Yelp scorers cannot be
imported (the GPU machine has torch and transformers only); without a GPU and without the
flag it stops with one line."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
# A Python in which these packages do not exist (`import ray` raises ImportError).
WITHOUT = ("ray", "mlflow", "optuna", "sacrebleu", "sklearn", "datasets", "gguf")
LAUNCH = (
    "import runpy, sys\n"
    f"for name in {WITHOUT!r}:\n"
    "    sys.modules[name] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run_check(*args, cwd=REPO):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-c", LAUNCH, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_cpu_dry_run_measures_every_method_and_the_scorer(tmp_path, data_dir):
    out = tmp_path / "gpu_check.json"
    done = run_check("--cpu-dry-run", "--data-dir", str(data_dir), "--models", "gpt2-xl", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["dry_run"] and record["device"] == "cpu" and not record["failures"] and not record["skipped"]
    assert record["modules"] == []  # neither Ray, MLflow nor Optuna was imported
    rows = {(r["dtype"], r["what"], r["batch"]): r for r in record["rows"]}
    for dtype in ("float32", "bfloat16"):
        for method in ("soft_prompt", "pez", "rlprompt"):
            row = rows[(dtype, method, 4)]
            assert row["ms"] > 0 and row["tokens/s"] > 0 and row["TFLOP/s"] > 0, row
        for kind in ("perplexity", "gradient"):
            for batch in (1, 16, 64):
                assert rows[(dtype, f"scorer {kind}", batch)]["TFLOP/s"] > 0
    agreement = {r["dtype"]: r for r in record["agreement"]}
    assert agreement["float32"]["passed"] is True and agreement["float32"]["loss"] == 0.0  # CPU against CPU
    assert 0 < agreement["bfloat16"]["log_perplexity"] < 0.1 and agreement["bfloat16"]["passed"] is None
    assert "bf16 peak share" in done.stdout and "wrote" in done.stdout


def test_without_a_gpu_it_stops_with_one_line(tmp_path, data_dir):
    done = run_check("--data-dir", str(data_dir), "--out", str(tmp_path / "never.json"))
    assert done.returncode == 2 and not (tmp_path / "never.json").exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "sees no CUDA device" in lines[0] and "--cpu-dry-run" in lines[0], done.stderr
