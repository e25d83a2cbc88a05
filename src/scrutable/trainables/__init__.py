"""Prompt optimizers: one module per method, and the registry that names them.

    method = get_method("pez")
    config = from_mapping(method.config_cls, {"task": "sst2", "alpha": 0.1})
    result = method.run(config)

Sweep files name methods through `METHODS`; the Ray Tune trainable is `sweep/trainable.py`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from scrutable.config import suggest
from scrutable.errors import UserError


@dataclass(frozen=True)
class Method:
    name: str
    module: str  # imported on first use: torch-heavy modules stay out of the CLI's start-up

    @property
    def config_cls(self) -> Any:
        from scrutable.trainables import configs  # torch-free, unlike the method's module

        return getattr(configs, _CONFIG_CLASSES[self.name])

    @property
    def run(self) -> Any:
        return importlib.import_module(self.module).run


_CONFIG_CLASSES = {"soft_prompt": "SoftPromptConfig", "pez": "PezConfig", "rlprompt": "RLPromptConfig"}
METHODS = {name: Method(name, f"scrutable.trainables.{name}") for name in _CONFIG_CLASSES}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}': {suggest(name, tuple(METHODS))}")
    return METHODS[name]
