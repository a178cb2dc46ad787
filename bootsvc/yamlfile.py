"""YAML files whose errors name the file, the line and the key: the loader
the config file and the profiles share."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """One or more problems, each ``file:line: key: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class LineMap(dict[str, Any]):
    """A mapping that remembers the line of each key."""

    lines: dict[str, int]
    line: int

    @classmethod
    def empty(cls, line: int = 1) -> LineMap:
        m = cls()
        m.line, m.lines = line, {}
        return m


MAX_FLOW_DEPTH = 64
# values (scalars, lists, mappings) a config may hold once its aliases are
# expanded: a thousand machines are some ten thousand
MAX_VALUES = 100_000
# a long scalar counts as one value per this many characters: a mapping
# alias repeating a megabyte string is as big as the text it stands for
SCALAR_UNIT = 256
MERGE_TAG = "tag:yaml.org,2002:merge"


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """The values ``node`` stands for with every alias expanded; each node
    measured once, so this is linear in the document, not in its expansion."""
    known = seen.get(id(node))
    if known is not None:
        return known
    seen[id(node)] = 1  # a recursive alias (&a [*a]) is measured as one value within itself
    size = 1
    if isinstance(node, yaml.ScalarNode):
        size += len(node.value) // SCALAR_UNIT
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, seen) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in node.value)
    seen[id(node)] = size = min(size, MAX_VALUES + 1)  # capped: the numbers stay small
    return size


def key_path(parts: list[str]) -> str:
    """``machines.52:54:00:00:00:01.ip``, ``tftp.roots[2]``: a place in the document."""
    return "".join(p if p.startswith("[") or i == 0 else "." + p for i, p in enumerate(parts))


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus: every mapping remembers its keys' lines
    (LineMap), and the composer, which still sees the text, reports keys
    given twice and aliases standing for a scalar or a list (``problems``)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.path: list[str] = []  # the keys and [indices] leading to the node being composed
        self.problems: list[tuple[int, str, str]] = []  # (line, key, message)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if isinstance(parent, yaml.SequenceNode):
            self.path.append(f"[{index}]")
        elif isinstance(parent, yaml.MappingNode) and index is not None:  # a value: its key is index
            self.path.append(plain(index.value) if isinstance(index, yaml.ScalarNode) else "?")
        else:  # the document, or a mapping's key
            self.path.append("")
        try:
            return self._alias_refused() or super().compose_node(parent, index)
        finally:
            self.path.pop()

    def _alias_refused(self) -> yaml.Node | None:
        """An alias may repeat a mapping (``<<: *defaults``); one standing
        for a scalar or a list is refused, and replaced by nothing, so the
        document never grows: a few lines of aliases of aliases of a long
        string ("billion laughs") would otherwise be gigabytes once read."""
        if not self.check_event(yaml.AliasEvent):
            return None
        event = self.peek_event()
        target = self.anchors.get(event.anchor)
        if target is None or isinstance(target, yaml.MappingNode):
            return None  # unknown anchors are PyYAML's error
        self.get_event()
        what = "a list" if isinstance(target, yaml.SequenceNode) else "a single value"
        self.problems.append((event.start_mark.line + 1, key_path([p for p in self.path if p]),
                              f"*{event.anchor} repeats {what}; write the value itself "
                              "(an alias may only repeat a mapping)"))
        return yaml.ScalarNode("tag:yaml.org,2002:null", "", event.start_mark, event.end_mark)

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[str, int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == MERGE_TAG:
                continue
            line = key.start_mark.line + 1
            if key.value in first:
                # PyYAML keeps the last silently: a machine would vanish, a listen block be replaced
                self.problems.append((line, key_path([p for p in self.path if p] + [key.value]),
                                      f"given twice (first at line {first[key.value]}); only one may stay"))
            else:
                first[key.value] = line
        return node

    def fetch_flow_collection_start(self, TokenClass: type) -> None:  # noqa: N803 - PyYAML's name
        # PyYAML's scanner keeps a possible simple key per open [ or { and
        # walks them all at every token: 1,500 of them took a second, 64 KiB
        # half an hour. A config nests a few levels.
        if self.flow_level >= MAX_FLOW_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"[ and {{ nested deeper than {MAX_FLOW_DEPTH}",
                                            self.get_mark())
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[misc]

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, IndexError, AttributeError, OverflowError) as e:
            # PyYAML's own constructors raise these for a tag they cannot
            # read ("!!int ''", "!!float x", "!!timestamp 1"): a YAML error at the node
            raise yaml.constructor.ConstructorError(None, None, f"cannot read {node.tag}: {e}",
                                                    node.start_mark) from None

    def construct_document(self, node: yaml.Node) -> Any:
        # aliases of aliases ("billion laughs") are cheap to write and
        # expensive to print: error messages show values, and str() of
        # such a value expands every alias
        if _expanded_size(node, {}) > MAX_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"aliases expand to more than {MAX_VALUES} values", node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LineMap:  # type: ignore[override]
        m = LineMap(super().construct_mapping(node, deep=True))
        m.line = node.start_mark.line + 1
        m.lines = {}
        for key_node, _ in node.value:
            m.lines[str(self.construct_object(key_node))] = key_node.start_mark.line + 1
        return m


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)

# YAML 1.1 reads 52:54:00:00:00:01 as a base-60 integer; MAC addresses are
# keys here, so numbers with colons stay strings (as in YAML 1.2).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_yaml(path: Path) -> LineMap:
    """The top-level mapping of a YAML file (empty for an empty file)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{path}:0: cannot read: {e.strerror}"]) from e
    try:
        text = raw.decode("utf-8")  # YAML is UTF-8 whatever the locale says
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 (byte {raw[e.start]:#04x})"]) from None
    try:
        loader = _Loader(text)  # its reader refuses control characters already
        try:
            node = loader.get_single_node()
            if loader.problems:
                raise ConfigError([f"{path}:{line}: {key}: {message}"
                                   for line, key, message in sorted(loader.problems)])
            doc = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as e:  # no mark, a position in the text
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError([f"{path}:{line}: YAML: character #x{e.character:04x} is not allowed"]) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError([f"{path}:{mark.line + 1 if mark else 0}: YAML: {getattr(e, 'problem', e)}"]) from e
    except RecursionError:  # PyYAML's composer recurses once per level of [ and {
        raise ConfigError([f"{path}:{loader.get_mark().line + 1}: YAML: nested too deeply"]) from None
    if doc is None:
        return LineMap.empty()
    if not isinstance(doc, LineMap):
        raise ConfigError([f"{path}:1: expected a mapping of keys"])
    return doc


def plain(value: Any, limit: int = 60) -> str:
    """A config value as an operator wrote it, for a message: YAML's words
    (true, nothing), not Python's (True, None, quotes), and never long."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


class Checker:
    """Collects problems (and warnings) of one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []
        self.warnings: list[str] = []

    @staticmethod
    def line_of(where: LineMap | None, key: str) -> int:
        return where.lines.get(key.split(".")[-1], where.line) if isinstance(where, LineMap) else 0

    def err(self, where: LineMap | None, key: str, message: str) -> None:
        self.at(self.line_of(where, key), key, message)

    def at(self, line: int, key: str, message: str) -> None:
        """A problem at a known line."""
        self.problems.append(f"{self.path}:{line}: {key}: {message}")

    def warn(self, where: LineMap | None, key: str, message: str) -> None:
        """Not wrong enough to refuse the config, worth saying."""
        self.warnings.append(f"{self.path}:{self.line_of(where, key)}: warning: {key}: {message}")

    def mapping(self, parent: LineMap, key: str, value: Any) -> LineMap | None:
        if not isinstance(value, LineMap):
            self.err(parent, key, f"expected a mapping, got {plain(value)}")
            return None
        return value

    def unknown(self, m: LineMap, allowed: set[str], prefix: str) -> None:
        for k in m:
            if k not in allowed:
                self.err(m, f"{prefix}{k}", f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def size(self, m: LineMap, key: str, where: str) -> int | None:
        """An optional byte size such as ``20G`` under ``key``."""
        if key not in m or m[key] is None:
            return None
        try:
            return parse_size(m[key])
        except ValueError as e:
            self.err(m, where, str(e))
            return None

    def integer(self, m: LineMap, key: str, where: str, default: int, high: int, meaning: str) -> int:
        """An optional whole number 0 <= n <= high under ``key`` (``meaning``
        says what it counts, for the error)."""
        value = m.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
            self.err(m, where, f"expected a whole number ({meaning}, 0 ... {high}), got {plain(value)}")
            return default
        return value

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """Bytes from ``4096``, ``512M``, ``20G``, ``1.5TiB`` (powers of 1024, as qemu-img)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _SIZE.match(str(value)) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if not m:
        raise ValueError(f"{plain(value)} is not a size (like 512M, 20G)")
    unit = m.group(2).upper()
    size = int(float(m.group(1)) * 1024 ** ("KMGTP".index(unit) + 1 if unit else 0))
    if size <= 0:
        raise ValueError(f"{plain(value)} is not a positive size")
    return size
