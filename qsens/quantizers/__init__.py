"""Quantizer registry: method name -> module holding `Settings` and `quantize`.

Modules are imported on first use so that heavy backends load only when a suite uses them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

REGISTRY: dict[str, str] = {
    "rtn": "qsens.quantizers.rtn",
    "gptq": "qsens.quantizers.gptq",
    "bnb": "qsens.quantizers.bnb",
    "noise": "qsens.quantizers.noise",
    "cast": "qsens.quantizers.cast",
}


def method_module(method: str) -> ModuleType:
    """The module implementing `method`; raises KeyError naming the known methods."""
    if method not in REGISTRY:
        raise KeyError(f"unknown quantization method {method!r}; known: {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[method])

