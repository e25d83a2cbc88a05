"""Where offline data, tokenizers and cached model conversions live.

Data is never copied into the repository. A run reads it from, in order: an explicit
`data_dir` argument, the `SCRUTABLE_DATA_DIR` environment variable, or else the Hugging
Face hub. The directory is laid out like `../shared/data` (see its README):
`sst2/`, `boolq/`, `yelp/`, `tokenizers/{gpt2,t5}/`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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

    Leaves nothing behind: it checks that an existing path has the right kind and writes a
    probe file into the folder that would receive it (the nearest existing parent), then
    deletes it. A real write, not the access bits: as root every mode bit says yes, even
    for /proc or a read-only mount."""
    path = Path(path).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # a name over 255 bytes (ENAMETOOLONG), a path through a file
        raise UserError(f"{what} {_short(path)} is not a usable path ({os.strerror(exc.errno or 0)})") from None
    if exists:
        if folder and not path.is_dir():
            raise UserError(f"{what} {path} is a file, not a folder: pass a folder path")
        if not folder and path.is_dir():
            raise UserError(f"{what} {path} is a folder: pass a file path")
        if not folder and not path.is_file():  # a device or a pipe: a rename would replace it
            raise UserError(f"{what} {path} is not a regular file: pass a file path")
        if not folder:  # an existing file: open it for writing (truncating nothing)
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
            except OSError as exc:
                raise UserError(
                    f"{what} {path} is not writable ({os.strerror(exc.errno or 0)}): pass a path you can write"
                ) from None
        _probe(path if folder else path.parent, f"{what} {path} is not writable")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path} cannot be created: {parent} is a file, not a folder")
    _probe(parent, f"{what} {path} cannot be created: {parent} is not writable")


def _probe(folder: Path, problem: str) -> None:
    """Create and delete a file in `folder`; one UserError line if that fails."""
    probe = folder / f".scrutable-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UserError(f"{problem} ({os.strerror(exc.errno or 0)}): pass a path you can write") from None
    os.close(fd)
    os.unlink(probe)


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 80 else f"{text[:60]}...({len(text)} characters)"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, renamed over it when the block succeeds.

    A reader (or a user after a full disk) sees the old file or the whole new one, never a
    half-written one; on failure the temporary file is removed and nothing is left."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomically(target: Path, content: str | bytes) -> None:
    """`target.write_text` / `write_bytes` through a temporary file and a rename."""
    with atomic_path(target) as temporary:
        if isinstance(content, bytes):
            temporary.write_bytes(content)
        else:
            temporary.write_text(content, encoding="utf-8")


def os_error_reason(exc: OSError) -> str:
    """What an OSError from the user's disk or paths means, in words."""
    import errno

    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "a read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENAMETOOLONG: "a name longer than the file system allows (255 bytes)",
    }
    return reasons.get(exc.errno or 0, exc.strerror or type(exc).__name__)
