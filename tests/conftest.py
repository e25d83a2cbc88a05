"""Shared fixtures: the offline data folder, tiny random models, SmolLM2.

Tests never download: the hub is switched off for the whole session, so a code path that
reaches for it fails fast instead of hanging.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The per-user key that signs sweep state (sweep/trust.py): one per test session, not ~/.config.
os.environ.setdefault("SCRUTABLE_STATE_KEY", str(Path(tempfile.mkdtemp(prefix="scrutable-key-")) / "state.key"))

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    path = Path(os.environ.get("SCRUTABLE_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
    if not (path / "sst2").is_dir():
        raise RuntimeError(f"offline data not found at {path}: set SCRUTABLE_DATA_DIR")
    os.environ["SCRUTABLE_DATA_DIR"] = str(path)
    return path


DATA_DIR = _data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # Tiny matmuls on a shared 2-core machine: OpenMP spinning across threads makes them
    # up to ~100x slower than one thread. Seeded so every test is reproducible.
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_gpt2():
    from scrutable.models import tiny_gpt2

    return tiny_gpt2(DATA_DIR)


@pytest.fixture(scope="session")
def tiny_t5():
    from scrutable.models import tiny_t5

    return tiny_t5(DATA_DIR)


@pytest.fixture(scope="session")
def smollm():
    from scrutable.models import load_model

    return load_model("smollm2-135m")
