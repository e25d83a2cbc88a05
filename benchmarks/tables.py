"""What every benchmark script shares: a plain-text table, the JSON record, the machine.

Each script in benchmarks/ prints a table and writes its numbers as JSON (to --out,
default benchmarks/results/<script>.json) together with the machine it ran on, so a
number in docs/benchmarks.md can be traced to the file and the command that made it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def render(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Right-aligned columns; floats with 4 significant digits."""

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def write(out: Path | None, name: str, record: dict[str, Any]) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), **record}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
