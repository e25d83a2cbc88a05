"""Refuse to resume a sweep folder whose pickled state this user did not write.

`--resume` hands the folder's Ray Tune state to `pickle` (the experiment state, the
searcher state, `tuner.pkl`, the trials' `params.pkl`), and unpickling runs code: a crafted
folder from someone else would run theirs. So the driver signs that state as it writes it:
each state file's content gets an HMAC-SHA256 keyed by a random per-user secret in
`~/.config/scrutable/state.key` (created 0600 on first use; `SCRUTABLE_STATE_KEY` names
another file), collected in `tune/scrutable-state.hmac` (itself MACed). `--resume`
recomputes every state file's HMAC before Ray reads anything and refuses the folder if
one is not in the manifest.

Ray writes its state to a staging folder on the driver and copies it into `tune/` in the
background, so the signer (a Tune callback run after every loop step) signs the staged
files as well, and the manifest keeps the last few versions of each file: the copy that
lands later is already signed. A driver killed between a write and the next signing
leaves at most that one write unsigned; such a folder is refused like a foreign one, and
`--trust-folder` resumes it when the user knows where it came from.

    from scrutable.sweep.trust import sign, verify
    sign(folder / "tune"); verify(folder / "tune")   # raises UserError when not ours
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from scrutable.errors import UserError

KEY_ENV = "SCRUTABLE_STATE_KEY"
DIGEST_FILE = "scrutable-state.hmac"


def key_path() -> Path:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "scrutable" / "state.key"


def _key() -> bytes:
    path = key_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return path.read_bytes()


VERSIONS_KEPT = 20  # per file: Ray's background copy lags the staged state by a few writes


def state_files(root: Path) -> dict[str, Path]:
    """The files `Tuner.restore` may unpickle, by path relative to `root`: everything at the
    top of the Tune folder (experiment state, searcher state, tuner.pkl) and any pickle below."""
    if not root.is_dir():
        return {}
    found = [p for p in root.iterdir() if p.is_file() and p.name != DIGEST_FILE and not p.name.endswith(".tmp")]
    found += [p for p in root.glob("*/**/*.pkl") if p.is_file()]
    return {str(p.relative_to(root)): p for p in found}


def _mac(key: bytes, name: str, data: bytes) -> str:
    return hmac.new(key, name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def _manifest_mac(key: bytes, files: dict[str, list[str]]) -> str:
    return _mac(key, DIGEST_FILE, json.dumps(files, sort_keys=True).encode())


def _read_manifest(tune_dir: Path, key: bytes) -> dict[str, list[str]] | None:
    """The signed manifest, or None when missing or not signed with `key`."""
    path = tune_dir / DIGEST_FILE
    try:
        loaded = json.loads(path.read_text())
        files, mac = loaded["files"], loaded["mac"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _manifest_mac(key, files)):
        return None
    return files if isinstance(files, dict) else None


def sign(tune_dir: Path, staging_dirs: tuple[Path, ...] = ()) -> None:
    """Add the current content of every state file (in `tune_dir` and Ray's staging folders)."""
    key = _key()
    files = _read_manifest(tune_dir, key) or {}
    for root in (tune_dir, *staging_dirs):
        for name, path in state_files(root).items():
            try:
                mac = _mac(key, name, path.read_bytes())
            except FileNotFoundError:  # replaced while listing
                continue
            versions = [v for v in files.get(name, []) if v != mac] + [mac]
            files[name] = versions[-VERSIONS_KEPT:]
    target = tune_dir / DIGEST_FILE
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps({"files": files, "mac": _manifest_mac(key, files)}, sort_keys=True))
    temporary.replace(target)


def verify(tune_dir: Path) -> None:
    """Raise a one-line UserError unless this user's key signed every state file's content."""
    fix = (
        "it may run someone else's code when unpickled; resume only folders you wrote, "
        "or pass --trust-folder if you know where it came from"
    )
    if not key_path().is_file():  # no key yet: nothing was ever signed by this user
        raise UserError(f"{tune_dir.parent} was not written by you (no key at {key_path()}): {fix}")
    key = _key()
    files = _read_manifest(tune_dir, key)
    if files is None:
        raise UserError(f"{tune_dir.parent} has no state signature of yours ({DIGEST_FILE}): {fix}")
    for name, path in state_files(tune_dir).items():
        if _mac(key, name, path.read_bytes()) not in files.get(name, []):
            raise UserError(f"{tune_dir.parent} holds Ray Tune state not signed by you ({name}): {fix}")


def _fingerprint(roots: tuple[Path, ...]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for root in roots:
        for path in state_files(root).values():
            try:
                stat = path.stat()
            except FileNotFoundError:  # replaced between listing and stat
                continue
            out.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(out))


def signer_callback(tune_dir: Path) -> Any:
    """A Ray Tune callback signing the state (staged and copied) after each loop step that changed it."""
    from ray.tune import Callback

    class StateSigner(Callback):
        def __init__(self) -> None:
            self.seen: tuple[tuple[str, int, int], ...] = ()

        def __getstate__(self) -> dict[str, Any]:
            return {"seen": ()}

        def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
            if not tune_dir.is_dir():
                return
            staging: tuple[Path, ...] = ()
            if trials:
                staging = (Path(trials[0].storage.experiment_driver_staging_path),)
            roots = (tune_dir, *staging)
            now = _fingerprint(roots)
            if now != self.seen:
                sign(tune_dir, staging)
                self.seen = now

    return StateSigner()
