"""How a sweep folder was made, as commands a reader can paste.

For a folder whose sweep is named like a file under `sweeps/`, `commands` writes that
file with the fewest `--set` overrides (plain or `--smoke`) that rebuild the recorded spec,
then the exact replay from the folder's own spec:

    scrutable sweep sweeps/quickstart.yaml --smoke \\
        --set trials=4
    # exact replay: scrutable sweep runs/quickstart/spec.yaml --set storage=NEW_FOLDER

(A sweep named like no file under `sweeps/`, such as `quickstart-smoke`, gets the replay line alone.)

`full_scale` says what the same sweep file runs without `--smoke`, for a smoke folder.
Paths are shown relative to the working directory (the repository root, by convention).
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from scrutable.errors import UserError
from scrutable.report.read import Sweep
from scrutable.sweep.search_space import Dimension
from scrutable.sweep.spec import SweepSpec, load_spec

OFFLINE_MODELS = {"smollm2-135m", "minilm", "tiny-gpt2", "tiny-t5"}


def shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def commands(sweep: Sweep) -> list[str]:
    """How the folder was made: its sweep file with the overrides that differ, and the exact replay."""
    lines = ["```bash"]
    source = source_file(sweep.spec.name)
    if source is not None:
        found = [(o, smoke) for smoke in (False, True) if (o := _overrides(source, sweep.spec, smoke)) is not None]
        if found:
            overrides, smoke = min(found, key=lambda item: len(item[0]))  # the fewest --set: plain or --smoke
            sets = "".join(f" \\\n    --set {o}" for o in overrides)
            lines.append(f"scrutable sweep {shown_path(source)}{' --smoke' if smoke else ''}{sets}")
    lines.append(f"# exact replay: scrutable sweep {shown_path(sweep.folder.spec_file)} --set storage=NEW_FOLDER")
    return [*lines, "```"]


def source_file(name: str) -> Path | None:
    """The sweep file under sweeps/ named like the sweep, if any."""
    found = sorted(Path("sweeps").rglob(f"{name}.yaml")) if Path("sweeps").is_dir() else []
    return found[0] if found else None


def full_scale(name: str) -> str:
    """What the sweep's file runs without --smoke ("" when there is no such file)."""
    source = source_file(name)
    if source is None:
        return ""
    try:
        full = load_spec(source)
    except UserError:
        return ""
    steps = full.training.get("steps", "the default")
    hub = sorted({full.model, full.scorer} - OFFLINE_MODELS)
    return (
        f"At full scale `scrutable sweep {shown_path(source)}` runs task model `{full.model}` with scorer "
        f"`{full.scorer}`, {full.trials} trials of {steps} steps"
        + (f" ({', '.join(hub)} from the hub: a GPU job)" if hub else " (offline models)")
        + ", filling these same sections with real models."
    )


def _overrides(source: Path, recorded: SweepSpec, smoke: bool) -> list[str] | None:
    """`--set` arguments that turn `source` into `recorded` (None when it does not load)."""
    try:
        spec = load_spec(source, smoke=smoke)
    except UserError:
        return None
    ignore = {"storage", "local_dir", "data_dir", "search"}  # machine-specific; search below
    a, b = _flat(spec.to_dict()), _flat(recorded.to_dict())
    changed = [f"{k}={_yaml(b[k])}" for k in b if k.split(".")[0] not in ignore and a.get(k) != b[k]]
    searched = [f"search.{name}={_yaml(_dimension(dim))}" for name, dim in recorded.search.items()]
    if set(spec.search) != set(recorded.search):  # a dimension added or removed: the whole search
        return [f"search={_yaml({n: _dimension(d) for n, d in recorded.search.items()})}", *changed]
    return [
        s for s, name in zip(searched, recorded.search, strict=True) if spec.search[name] != recorded.search[name]
    ] + changed


def _dimension(dim: Dimension) -> dict[str, Any]:
    """A dimension as a sweep file writes it: the fields that differ from their defaults."""
    return {f.name: getattr(dim, f.name) for f in fields(dim) if getattr(dim, f.name) != f.default}


def _flat(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict) and item and key != "smoke":
            out.update(_flat(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


def _yaml(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("\n...").strip()
    return f"'{text}'" if any(c in text for c in " {}[],") else text


def shown_relative(path: Path, start: Path) -> str:
    """`path` relative to `start` (a markdown link from the document to its figures)."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
