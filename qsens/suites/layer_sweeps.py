"""A suite's `layers:` sweeps: expanded per quantizer entry into canonical layer sets, checked against the Linear
modules of the suite's checkpoints (read from their configs, `families.structure`), before any setting is built.

`layers: each_block` sweeps one set per decoder block, `each_kind` one per kind of linear, `all` is the whole
model, `[name, ...]` is one set of explicit tensor names, and a list of these sweeps each (see
`quantizers.layer_sets.expand`). A set is checked against the names each entry's `skip` leaves selectable.
"""

from __future__ import annotations

import fnmatch

from qsens.families.checkpoint import Checkpoint
from qsens.families.structure import linear_names
from qsens.quantizers import REGISTRY, layer_sets, method_module

DEFAULT_SKIP = ("lm_head",)


def selectable(names: tuple[str, ...], skip) -> list[str]:
    """The names `skip` (fnmatch patterns) leaves to quantize, as quantizers.layers.quantizable_linears does."""
    return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in skip)]


def checkpoint_structures(checkpoints: list[Checkpoint]) -> dict[tuple[str, str | None], tuple[str, ...]]:
    """(location, revision) -> the checkpoint's Linear module names."""
    return {(c.location, c.revision): linear_names(c) for c in checkpoints}


def expand_entries(entries: list[dict], structures: dict) -> tuple[list[dict], list[tuple[str, str]]]:
    """The quantizer entries with every `layers` value replaced by the list of canonical sets it sweeps (a
    one-element list for a single set; None stands for the whole model), and the problems found."""
    out, problems = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "layers" not in entry:
            out.append(entry)
            continue
        method = entry.get("method")
        if method in REGISTRY and not method_module(method).Settings.supports_layer_sets:
            problems.append((f"quantizers[{i}].layers", f"{method} cannot quantize a layer set (it quantizes "
                                                         "whole decoder blocks); methods that can: "
                                                         + ", ".join(m for m in REGISTRY
                                                                     if method_module(m).Settings.supports_layer_sets)))
            out.append({k: v for k, v in entry.items() if k != "layers"})
            continue
        skip = entry.get("skip", DEFAULT_SKIP)
        skip = tuple(skip) if isinstance(skip, list) and all(isinstance(p, str) for p in skip) else DEFAULT_SKIP
        union = list(dict.fromkeys(n for names in structures.values() for n in selectable(names, skip)))
        try:
            sets = layer_sets.expand(entry["layers"], union)
            for layer_set in sets:
                if layer_set is not None and layer_set.startswith("names:"):
                    _check_everywhere(layer_set, structures, skip)
        except ValueError as exc:
            problems.append((f"quantizers[{i}].layers", str(exc)))
            out.append({k: v for k, v in entry.items() if k != "layers"})
            continue
        out.append({**entry, "layers": sets})
    return out, problems


def _check_everywhere(layer_set: str, structures: dict, skip) -> None:
    """Explicit names must exist in every checkpoint, or cells of one size would quantize a smaller set."""
    for (location, _), names in structures.items():
        unknown = layer_sets.unknown_names(layer_set, selectable(names, skip))
        if unknown:
            raise ValueError(f"unknown tensor name(s) {unknown[:5]} in checkpoint {location}: valid names are "
                             f"{selectable(names, skip)}")


def applies(settings, structure: tuple[str, ...] | None) -> bool:
    """Whether a setting has anything to quantize in a checkpoint of this structure (block 5 of a 4-block
    model has not); True when the structure is unknown (the cell then checks at run time)."""
    if settings.layers is None or structure is None:
        return True
    return bool(layer_sets.members(settings.layers, selectable(structure, settings.skip)))
