"""What `--resume` may change: the stored spec is the sweep; only its concurrency may differ.

A sweep folder keeps the spec it was started with (`spec.yaml`). Resuming with another
method, task, search space or number of trials would mix two experiments in one Optuna
study and one MLflow parent run (and a changed `trials` left every resume "interrupted"),
so `check_compatible` refuses it in one line naming the differing fields, before anything
in the folder is rewritten. What may change, because it does not change any trial's
result: `concurrency` (how many trials run at once) and `storage` / `local_dir` (where
the folder now lives: a moved or copied folder; with a URI storage the driver's folder is
under `local_dir`). More trials are not supported: Ray Tune restores the
planned number from its own state.

    scrutable sweep runs/quickstart --resume                 # the stored spec
    scrutable sweep runs/quickstart --resume --set concurrency=4
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scrutable.errors import UserError
from scrutable.sweep.spec import SweepSpec, load_spec

MAY_CHANGE = ("concurrency", "storage", "local_dir")


def stored_spec(folder: Path, overrides: dict[str, str] | None = None) -> SweepSpec:
    """The spec a sweep folder was started with, re-rooted where the folder is now."""
    path = folder / "spec.yaml"
    if not path.is_file():
        raise UserError(f"{folder} is not a sweep folder (no spec.yaml): pass runs/<sweep name>")
    from scrutable.sweep.spec import parse_yaml
    from scrutable.sweep.storage import is_uri

    stored = parse_yaml(path.read_text(encoding="utf-8", errors="replace"), str(path))
    stored_storage = stored.get("storage") if isinstance(stored, dict) else None
    # The driver's folder is storage/name, or local_dir/name when Tune's storage is a URI (kept as is).
    where = "local_dir" if isinstance(stored_storage, str) and is_uri(stored_storage) else "storage"
    spec = load_spec(path, {**(overrides or {}), where: str(folder.resolve().parent)})
    if spec.name != folder.name:
        raise UserError(
            f"{folder} holds sweep '{spec.name}' (its Optuna study and MLflow experiment carry that name): "
            f"rename the folder back to {spec.name}"
        )
    return spec


def differing_fields(stored: SweepSpec, given: SweepSpec) -> list[str]:
    """Dotted names of the fields that differ, except those that may change on resume."""

    def walk(a: Any, b: Any, prefix: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            out: list[str] = []
            for key in sorted(set(a) | set(b), key=str):
                out += walk(a.get(key), b.get(key), f"{prefix}{key}.")
            return out
        return [] if a == b else [prefix.rstrip(".")]

    old, new = stored.to_dict(), given.to_dict()
    for key in MAY_CHANGE:
        old.pop(key, None)
        new.pop(key, None)
    return walk(old, new, "")


def check_compatible(stored: SweepSpec, given: SweepSpec, folder: Path) -> None:
    differing = differing_fields(stored, given)
    if differing:
        raise UserError(
            f"{folder} was started with another spec ({', '.join(differing)} differ): resume with the stored one "
            f"(`scrutable sweep {folder} --resume`; only {', '.join(MAY_CHANGE)} may change) or start a new "
            "sweep under another name"
        )
