"""Where offline data, tokenizers and cached model conversions live.

Data is never copied into the repository. A run reads it from, in order: an explicit
`data_dir` argument, the `SCRUTABLE_DATA_DIR` environment variable, or else the Hugging
Face hub. The directory is laid out like `../shared/data` (see its README):
`sst2/`, `boolq/`, `yelp/`, `tokenizers/{gpt2,t5}/`.
"""

from __future__ import annotations

import os
from pathlib import Path

from scrutable.errors import UserError

DATA_DIR_ENV = "SCRUTABLE_DATA_DIR"
CACHE_DIR_ENV = "SCRUTABLE_CACHE_DIR"


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """The local data directory to use, or None to load from the hub."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        raise UserError(
            f"data directory {path} does not exist: pass --data-dir DIR or set "
            f"{DATA_DIR_ENV} to a folder laid out like ../shared/data"
        )
    return path


def require_data_dir(data_dir: str | Path | None, what: str) -> Path:
    """Like `resolve_data_dir`, for things that exist only locally (tokenizers for tiny models)."""
    path = resolve_data_dir(data_dir)
    if path is None:
        raise UserError(
            f"{what} needs local files: set {DATA_DIR_ENV} (or pass --data-dir) to a folder "
            "laid out like ../shared/data"
        )
    return path


def require_file(path: Path, hint: str) -> Path:
    if not path.exists():
        raise UserError(f"missing data file {path}: {hint}")
    return path


def cache_dir() -> Path:
    """Per-machine cache (converted models, trained style classifier). Safe to delete."""
    root = os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "scrutable"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_writable(path: Path, what: str, *, folder: bool) -> None:
    """Fail before the work, not after it, when `path` (a file or a folder) cannot be written.

    Creates nothing: it checks that an existing path has the right kind and that the nearest
    existing parent is a writable folder."""
    path = Path(path).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            raise UserError(f"{what} {path} is a file, not a folder: pass a folder path")
        if not folder and path.is_dir():
            raise UserError(f"{what} {path} is a folder: pass a file path")
        target = path if folder else path.parent
        if not os.access(target if target.exists() else path, os.W_OK):
            raise UserError(f"{what} {path} is not writable: pass a path you can write")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be created: {parent} is not writable")
