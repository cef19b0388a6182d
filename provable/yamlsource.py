"""Read a YAML file into plain data plus the source line of every node.

Validation needs three things PyYAML does not give by default: the line of every node (so
each message can say ``path:line``), an error for duplicate keys (PyYAML silently keeps the
last one), and hard bounds on size and alias expansion (a "billion laughs" file must not eat
the machine). libyaml composes the node graph in C, which keeps 1,000 contracts under a
second; we then build the data ourselves from the nodes, counting as we go.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:  # pragma: no cover - depends on how PyYAML was built
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

#: A contract is a few hundred lines; anything this large is a mistake or an attack.
MAX_FILE_BYTES = 8 * 1024 * 1024

#: Without aliases a document of N bytes cannot have more than N nodes, so this bound only
#: bites when aliases multiply the document (the "billion laughs" shape).
ALIAS_EXPANSION_FACTOR = 10
ALIAS_EXPANSION_FLOOR = 10_000

JsonPath = tuple[Any, ...]

_TAG = "tag:yaml.org,2002:"


class YamlSourceError(Exception):
    """The file cannot be read as YAML at all; carries the line the reader stopped at."""

    def __init__(self, message: str, line: int = 1, rule: str = "yaml-syntax") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.rule = rule


@dataclass
class SourceProblem:
    """A defect found while reading that does not stop reading (a duplicate key)."""

    line: int
    rule: str
    message: str


@dataclass
class YamlDocument:
    """Plain data (dict/list/str/int/float/bool/None) and where each node came from."""

    path: Path
    data: Any
    lines: dict[JsonPath, int]
    problems: list[SourceProblem] = field(default_factory=list)

    def line_of(self, path: JsonPath) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            line = self.lines.get(path)
            if line is not None:
                return line
            path = path[:-1]
        return self.lines.get((), 1)


def read_yaml(path: Path, max_bytes: int = MAX_FILE_BYTES) -> YamlDocument:
    """Read one YAML file within bounded memory and time; raise ``YamlSourceError``."""
    path = Path(path)
    if path.is_dir():
        raise YamlSourceError("is a directory, not a contract file", rule="io")
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise YamlSourceError("no such file", rule="io") from None
    except OSError as exc:
        raise YamlSourceError(f"cannot read: {exc.strerror}", rule="io") from None
    if size > max_bytes:
        raise YamlSourceError(
            f"file is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit "
            "for a contract",
            rule="file-size",
        )
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise YamlSourceError(f"cannot read: {exc.strerror}", rule="io") from None
    if len(raw) > max_bytes:  # grew between stat and read
        raise YamlSourceError(f"file is over the {max_bytes} byte limit", rule="file-size")
    return parse_yaml(raw, path)


def parse_yaml(raw: bytes, path: Path) -> YamlDocument:
    """Parse bytes already in memory (see ``read_yaml``)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlSourceError(
            f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {column}",
            line=line,
            rule="encoding",
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise YamlSourceError("NUL byte in file (binary data, not YAML)", line, "encoding")

    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text) from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(f"YAML error: {exc}") from None
    finally:
        loader.dispose()
    if node is None:
        raise YamlSourceError("file is empty", rule="top-level")

    builder = _Builder(budget=ALIAS_EXPANSION_FACTOR * len(raw) + ALIAS_EXPANSION_FLOOR)
    data = builder.build(node, ())
    return YamlDocument(path=path, data=data, lines=builder.lines, problems=builder.problems)


def _syntax_error(exc: yaml.MarkedYAMLError, text: str) -> YamlSourceError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    column = mark.column + 1 if mark is not None else 1
    problem = exc.problem or str(exc)
    context = exc.context or ""
    lines = text.splitlines()
    source_line = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in source_line[: max(column, 1)] or "'\\t'" in problem:
        tab = source_line.index("\t") + 1 if "\t" in source_line else column
        return YamlSourceError(
            f"YAML syntax: tab character at column {tab}; YAML indentation must be spaces", line
        )
    if "single document" in context:
        return YamlSourceError(
            "YAML syntax: more than one YAML document in the file (a contract is one document)",
            line,
        )
    where = f" ({context})" if context else ""
    return YamlSourceError(f"YAML syntax: {problem}{where}, column {column}", line)


class _Builder:
    """Turn composed nodes into plain data, recording lines and counting every node built."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.lines: dict[JsonPath, int] = {}
        self.problems: list[SourceProblem] = []
        self._scalar = yaml.SafeLoader("")  # used only for its scalar constructors

    def _spend(self, node: yaml.Node) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise YamlSourceError(
                "alias expansion too large (a 'billion laughs' YAML bomb?): refusing to expand",
                node.start_mark.line + 1,
                "alias-bomb",
            )

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self._spend(node)
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar_value(node)

    def _scalar_value(self, node: yaml.ScalarNode) -> Any:
        tag = node.tag
        if tag in (_TAG + "str", _TAG + "timestamp"):
            return node.value  # dates stay text: contracts are JSON-shaped data
        if tag in (_TAG + "int", _TAG + "float", _TAG + "bool", _TAG + "null"):
            return self._scalar.construct_object(node)
        if tag == _TAG + "binary":
            return node.value
        raise YamlSourceError(
            f"unsupported YAML tag {tag!r} (contracts hold plain data)",
            node.start_mark.line + 1,
            "yaml-tag",
        )

    def _mapping(self, node: yaml.MappingNode, path: JsonPath) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                self._merge(result, value_node, path)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlSourceError(
                    "mapping key is not a scalar", key_node.start_mark.line + 1, "yaml-syntax"
                )
            self._spend(key_node)
            key = self._scalar_value(key_node)
            if not isinstance(key, str):
                key = str(key) if not isinstance(key, bool) else str(key).lower()
            line = key_node.start_mark.line + 1
            if key in first_line:
                where = ".".join(str(p) for p in path) or "top level"
                self.problems.append(
                    SourceProblem(
                        line,
                        "duplicate-key",
                        f"duplicate key {key!r} in {where} (first at line {first_line[key]}); "
                        "YAML readers silently keep only one of them",
                    )
                )
                continue
            first_line[key] = line
            self.lines[(*path, key)] = line
            result[key] = self.build(value_node, (*path, key))
        return result

    def _merge(self, result: dict[Any, Any], value_node: yaml.Node, path: JsonPath) -> None:
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for source in sources:
            merged = self.build(source, path)
            if not isinstance(merged, dict):
                raise YamlSourceError(
                    "merge key '<<' needs a mapping", source.start_mark.line + 1, "yaml-syntax"
                )
            for key, value in merged.items():
                result.setdefault(key, value)
