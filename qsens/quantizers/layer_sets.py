"""Layer sets: quantize only part of a model (one block, one kind of linear, or named tensors), for any method.

A setting's `layers` (QuantSettings.layers) is None for the whole model or one canonical set:

    block:<i>          every selected nn.Linear of decoder block i ('model.layers.3.mlp.up_proj' is block 3)
    kind:<suffix>      one kind of linear across all blocks ('kind:mlp.down_proj', 'kind:self_attn.q_proj')
    names:<a>,<b>,...  explicit module names (sorted, comma-joined)

The block of a module name is its first all-digit component and its kind is what follows (a name with no digit
component, e.g. 'lm_head', is its own kind and in no block). The set is applied once for every method by
`qsens.quantizers.selected.quantize_selected`: the method is called with the setting's `skip` extended by every selected Linear outside the
set, so any method that honours `skip` (the base-class contract) quantizes exactly the set, and the result is
checked against it. Suites sweep sets with `layers: each_block` / `each_kind` (expanded per checkpoint by
`expand`).
"""

from __future__ import annotations

import hashlib


KEYWORDS = ("all", "each_block", "each_kind")
_PREFIXES = ("block:", "kind:", "names:")


def block_and_kind(name: str) -> tuple[int | None, str]:
    """'model.layers.3.self_attn.q_proj' -> (3, 'self_attn.q_proj'); 'lm_head' -> (None, 'lm_head')."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return int(part), ".".join(parts[i + 1:]) or name
    return None, name


def check_canonical(layer_set: str) -> str:
    """The set unchanged if it is well formed, else ValueError saying what is allowed."""
    if not layer_set.startswith(_PREFIXES):
        raise ValueError(f"a layer set is 'block:<i>', 'kind:<suffix>' or 'names:<a>,<b>' (got {layer_set!r}); "
                         f"in a suite also one of {', '.join(KEYWORDS)} or a list of tensor names")
    head, _, body = layer_set.partition(":")
    if not body or (head == "block" and not body.isdigit()):
        raise ValueError(f"malformed layer set {layer_set!r}: 'block:' takes a block index, 'kind:' and 'names:' "
                         "a non-empty suffix or name list")
    if head == "names" and body.split(",") != sorted(set(body.split(","))):
        raise ValueError(f"layer set {layer_set!r}: names must be distinct and sorted (use names_set())")
    return layer_set


def names_set(names) -> str:
    """The canonical set of explicit module names."""
    return "names:" + ",".join(sorted(set(names)))


def members(layer_set: str, names: list[str]) -> list[str]:
    """Which of `names` (a model's selectable Linear module names) the set holds, in model order."""
    head, _, body = check_canonical(layer_set).partition(":")
    if head == "block":
        return [n for n in names if block_and_kind(n)[0] == int(body)]
    if head == "kind":
        return [n for n in names if block_and_kind(n)[1] == body]
    wanted = set(body.split(","))
    return [n for n in names if n in wanted]


def unknown_names(layer_set: str, names: list[str]) -> list[str]:
    """Names of a 'names:' set that are not among `names` (empty for block/kind sets)."""
    head, _, body = layer_set.partition(":")
    return sorted(set(body.split(",")) - set(names)) if head == "names" else []


def short_label(layer_set: str) -> str:
    """What a label shows: 'block3', 'mlp.down_proj', the name itself, or 'names-<8 hex>' for several names."""
    head, _, body = layer_set.partition(":")
    if head == "block":
        return f"block{body}"
    if head == "kind" or "," not in body:
        return body
    return "names-" + hashlib.sha256(body.encode()).hexdigest()[:8]


def expand(value, names: list[str]) -> list[str | None]:
    """A suite's `layers` value -> the canonical sets it sweeps, given the selectable Linear names of the suite's
    checkpoints (union): 'each_block' -> one set per block, 'each_kind' -> one per kind, 'all' -> None (whole
    model), a list of plain names -> that one set, a list holding keywords, sets or name lists -> each of them.
    Raises ValueError naming what is wrong and, for unknown tensor names, the valid ones."""
    if isinstance(value, str):
        return _expand_one(value, names)
    if not isinstance(value, list) or not value:
        raise ValueError(f"layers: give {', '.join(KEYWORDS)}, a set ('block:0') or a non-empty list of tensor names")
    if all(isinstance(v, str) and v not in KEYWORDS and not v.startswith(_PREFIXES) for v in value):
        return _expand_one(names_set(value), names)
    out: list[str | None] = []
    for v in value:
        out += _expand_one(names_set(v), names) if isinstance(v, list) else expand(v, names)
    return list(dict.fromkeys(out))


def _expand_one(value: str, names: list[str]) -> list[str | None]:
    if value == "all":
        return [None]
    if value == "each_block":
        blocks = sorted({b for b in map(lambda n: block_and_kind(n)[0], names) if b is not None})
        return [f"block:{b}" for b in blocks]
    if value == "each_kind":
        return [f"kind:{k}" for k in dict.fromkeys(block_and_kind(n)[1] for n in names)]
    if not value.startswith(_PREFIXES):
        value = names_set([value])
    check_canonical(value)
    unknown = unknown_names(value, names)
    if unknown:
        raise ValueError(f"unknown tensor name(s) {unknown[:5]}: valid names are the selectable Linear modules "
                         f"{names}")
    if not members(value, names):
        raise ValueError(f"layer set {value!r} selects no Linear module; valid names: {names}")
    return [value]
