"""Reading a hand-written input file (a suite's YAML, a manifest's JSON) into plain data, defensively.

Suites and manifests come from many people and, unattended, from the hub: every problem must become a message
naming the file, the key path and what is allowed, never a traceback, a silent guess or a runaway allocation.

- size: files above `MAX_BYTES` are refused before they are read;
- encoding: UTF-8 only (a BOM is tolerated); anything else names the byte offset;
- YAML: a mapping key given twice is an error with both line numbers (PyYAML lets the later one win);
  booleans are YAML 1.2's `true`/`false` only; a plain scalar that YAML 1.1 and 1.2 read differently is refused
  with both readings and its key path (`Ambiguous`): `yes`/`no`/`on`/`off` (1.1: booleans, 1.2: strings), a
  leading zero (`010`: 1.1 octal 8, 1.2 decimal 10), `0b11`, `1_000`, sexagesimal `1:30` (1.1: 90); quoted, each
  is the string as written. Dates stay strings;
- JSON: a key given twice is an error too;
- the parsed tree (`check_tree`): keys are strings, integers fit SQLite's signed 64 bits, floats are finite,
  only JSON types occur, and the tree (aliases expanded) has at most `MAX_NODES` nodes.

Problems are (key path, what) pairs, the currency of `qsens.suites.load.SuiteError`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import yaml

MAX_BYTES = 1 << 20  # a suite is a page of YAML; 1 MiB is already 10,000 lines
MAX_NODES = 100_000  # after expanding YAML aliases (a "billion laughs" document stays small on disk)
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


class InputError(ValueError):
    """The file cannot be turned into data at all; `problems` as in SuiteError."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{w or '<top>'}: {m}" for w, m in problems))


def short(value, limit: int = 60) -> str:
    """repr() of a given value for a message: control characters escaped, long values cut."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"  # repr() of a huge int is slow, or refused past 4300 digits
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path: Path, max_bytes: int = MAX_BYTES) -> str:
    """The file's text; InputError if it is missing, unreadable, too large or not UTF-8."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise InputError([("", "not a regular file")])
        if size > max_bytes:
            raise InputError([("", f"file is {size:,} bytes; the limit is {max_bytes:,} (split it, or use sweeps)")])
        data = path.read_bytes()
    except OSError as exc:
        raise InputError([("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        hint = " (looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise InputError([("", f"not UTF-8{hint}: byte {data[exc.start]:#04x} at offset {exc.start} cannot be "
                               "decoded; save the file as UTF-8")]) from None


class _Loader(yaml.SafeLoader):
    """SafeLoader with duplicate-key errors, YAML 1.2 booleans and no timestamps."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error names it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {short(key)} (first on line {first}); give each key once",
                        key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


class Ambiguous(str):
    """A plain (unquoted) scalar that YAML 1.1 and YAML 1.2 read differently (`010`, `yes`, `1:30`, `1_000`, `0b11`):
    constructed as this marker so `check_tree` can refuse it with its key path, saying how each would read it."""

    line: int = 0

    def readings(self) -> str:
        text = str(self)
        old = yaml.safe_load(text)  # PyYAML implements YAML 1.1
        new = int(text) if re.fullmatch(r"[-+]?[0-9]+", text) else text  # YAML 1.2's core schema
        meant = " or ".join(dict.fromkeys(json.dumps(v) for v in (old, new) if not isinstance(v, str)))
        return (f"{text} is ambiguous: YAML 1.1 (yaml.safe_load and many tools) reads it as {_reading(old)}, YAML 1.2 "
                f"as {_reading(new)}; write {meant} as meant, or quote it ('{text}') for the string")


def _reading(value) -> str:
    return f"the string {value!r}" if isinstance(value, str) else json.dumps(value)


_AMBIGUOUS = re.compile(r"""^(?:yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF
    |[-+]?0[0-9_]+                                   # a leading zero: octal in 1.1 (010 = 8), decimal in 1.2
    |[-+]?0b[01_]+                                   # binary: a number in 1.1, a string in 1.2
    |[-+]?[1-9][0-9]*_[0-9_]*(?:\.[0-9_]*)?           # digit separators: a number in 1.1, a string in 1.2
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?  # sexagesimal: 1:30 = 90 in 1.1, a string in 1.2
    )$""", re.X)
_AMBIGUOUS_TAG = "tag:qsens,2026:ambiguous"


def _construct_ambiguous(loader, node):
    value = Ambiguous(loader.construct_scalar(node))
    value.line = node.start_mark.line + 1
    return value


_BOOL_1_2 = r"^(?:true|True|TRUE|false|False|FALSE)$"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(_BOOL_1_2), list("tTfF"))
for _first in "yYnNoO+-0123456789":  # checked before the int/float resolvers of the same first character
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(0, (_AMBIGUOUS_TAG, _AMBIGUOUS))
_Loader.add_constructor(_AMBIGUOUS_TAG, _construct_ambiguous)


def parse_yaml(text: str):
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise InputError([("", f"not valid YAML{at}: {what}")]) from None
    except yaml.YAMLError as exc:
        raise InputError([("", f"not valid YAML: {exc}")]) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InputError([("", f"not valid YAML: {exc}")]) from None
    except RecursionError:
        raise InputError([("", "nested too deeply")]) from None


def _no_duplicate_pairs(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {short(key)}; give each key once")
        out[key] = value
    return out


def parse_json(text: str):
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_pairs)
    except ValueError as exc:  # JSONDecodeError and duplicate keys
        raise InputError([("", f"not valid JSON: {exc}")]) from None
    except RecursionError:
        raise InputError([("", "nested too deeply")]) from None


def _join(where: str, part) -> str:
    return f"{where}[{part}]" if isinstance(part, int) else (f"{where}.{part}" if where else str(part))


def _loc(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def pydantic_problems(exc, prefix: str = "") -> list[tuple[str, str]]:
    """A pydantic ValidationError as (key path, what) problems: `quantizers[2].bits`, 'unknown key' for a key the
    model forbids, the offending value where it is a scalar. `prefix`: the path of the validated part."""
    problems = []
    for err in exc.errors():
        where = _loc(tuple(err["loc"]))
        where = f"{prefix}.{where}" if prefix and where else (prefix or where)
        what = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            what = "unknown key"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], (dict, list)):
            what += f" (got {short(err['input'])})"
        problems.append((where, what))
    return problems


def read_checked(path: Path, max_bytes: int = MAX_BYTES, fmt: str = "yaml"):
    """A YAML (or JSON) file as plain data that passed `check_tree`: size cap, UTF-8, no duplicate keys, 64-bit
    integers, finite floats. Raises InputError with every problem."""
    text = read_text(Path(path), max_bytes=max_bytes)
    raw = parse_json(text) if fmt == "json" else parse_yaml(text)
    problems = check_tree(raw)
    if problems:
        raise InputError(problems)
    return raw


def check_tree(tree, where: str = "") -> list[tuple[str, str]]:
    """Problems of a parsed document that no schema should have to see (see the module docstring)."""
    problems: list[tuple[str, str]] = []
    stack, nodes = [(where, tree)], 0
    while stack:
        at, value = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return problems + [("", f"more than {MAX_NODES:,} values (YAML aliases count once per use)")]
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, Ambiguous):
                    problems.append((at, f"key {key.readings()} (line {key.line})"))
                    continue
                if not isinstance(key, str):
                    problems.append((at, f"keys must be strings (got {short(key)})"))
                    continue
                stack.append((_join(at, key), item))
        elif isinstance(value, list):
            stack.extend((_join(at, i), item) for i, item in enumerate(value))
        elif isinstance(value, Ambiguous):
            problems.append((at, f"{value.readings()} (line {value.line})"))
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                problems.append((at, f"integer out of range: must fit in 64 bits, -2**63..2**63-1 (got {short(value)})"))
        elif isinstance(value, float):
            if not math.isfinite(value):
                problems.append((at, f"must be a finite number (got {value!r})"))
        else:
            problems.append((at, f"must be a string, number, boolean, list or mapping (got YAML type "
                                 f"{type(value).__name__})"))
    return sorted(problems)


class DocumentError(ValueError):
    """A document that cannot be read or does not fit its schema; the message lists every problem as
    `file: key.path: what`, under the line `file: invalid <what the document is>`."""

    def __init__(self, path: Path, what: str, problems: list[tuple[str, str]]):
        self.path, self.problems = Path(path), list(problems)
        lines = [f"{path}: {where or '<top>'}: {message}" for where, message in self.problems]
        super().__init__(f"{path}: invalid {what}\n  " + "\n  ".join(lines))


def read_model(path: Path, model, what: str):
    """A YAML document read with `read_checked` and validated by the pydantic `model` strictly, as suites are (through
    JSON: a YAML "4" is not 4, "yes" is not a boolean; unknown keys are errors where the model forbids them).
    Raises DocumentError naming `what` the document is."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(json.dumps(read_checked(Path(path))), strict=True)
    except InputError as exc:
        raise DocumentError(path, what, exc.problems) from None
    except ValidationError as exc:
        raise DocumentError(path, what, pydantic_problems(exc)) from None
