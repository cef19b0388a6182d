"""Read a YAML file into plain data plus the source line of every node.

Validation needs three things PyYAML does not give by default: the line of every node (so
each message can say ``path:line``), an error for duplicate keys (PyYAML silently keeps the
last one), and hard bounds on size and alias expansion (a "billion laughs" file must not eat
the machine). libyaml composes the node graph in C, which keeps 1,000 contracts under a
second; we then build the data ourselves from the nodes, counting as we go.
"""

from __future__ import annotations

import os
import stat
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

#: Nodes a document may expand to (aliases counted at their full size). The largest contract
#: in the public corpus has a few thousand; this bounds memory by the built document, not by
#: the text (a 1 MB file of aliases could otherwise expand to gigabytes).
MAX_NODES = 200_000
#: Nesting levels. Contracts need about 6; libyaml's composer overflows the C stack near
#: 100,000 and a recursive builder hits Python's limit near 500.
MAX_DEPTH = 64
#: Digits of an integer: Python refuses to convert over 4,300; a contract needs a handful.
MAX_INT_CHARS = 100

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
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise YamlSourceError("no such file", rule="io") from None
    except OSError as exc:
        raise YamlSourceError(f"cannot read: {exc.strerror}", rule="io") from None
    if stat.S_ISDIR(st.st_mode):
        raise YamlSourceError("is a directory, not a contract file", rule="io")
    if not stat.S_ISREG(st.st_mode):
        # a FIFO would block the reader forever, a device could be endless
        raise YamlSourceError("not a regular file (a FIFO, socket or device?)", rule="io")
    if st.st_size > max_bytes:
        raise YamlSourceError(
            f"file is {st.st_size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit "
            "for a contract",
            rule="file-size",
        )
    try:
        # O_NONBLOCK: a file swapped for a FIFO after the stat still cannot block us
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise YamlSourceError("not a regular file", rule="io")
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

    builder = _EventBuilder(path)
    loader = _Loader(text)
    try:
        data = builder.run(loader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, text) from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(f"YAML error: {exc}") from None
    finally:
        loader.dispose()
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


_MERGE = object()  # the pending key of a ``<<:`` entry
_BUILDING = object()  # an anchor whose collection is still open: an alias to it recurses
_COLLECTION_TAGS = {
    yaml.MappingStartEvent: (None, "!", _TAG + "map"),
    yaml.SequenceStartEvent: (None, "!", _TAG + "seq"),
}


class _Frame:
    __slots__ = ("anchor", "data", "first_line", "key", "line", "path", "spent_at")

    def __init__(self, data: Any, path: JsonPath, line: int, anchor: str | None, spent: int):
        self.data = data
        self.path = path
        self.line = line
        self.anchor = anchor
        self.spent_at = spent
        self.key: Any = None  # a mapping's key waiting for its value
        self.first_line: dict[Any, int] = {}


class _EventBuilder:
    """Build plain data from libyaml's parser events, with an explicit stack.

    No recursion anywhere: libyaml's composer and a recursive builder both die on deep
    nesting (a C stack overflow at ~100,000 levels, a RecursionError at ~500). The nesting
    depth and the number of nodes the document expands to (aliases counted at their full
    size) are capped while reading, so memory is bounded by the document, not the text.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[JsonPath, int] = {}
        self.problems: list[SourceProblem] = []
        self.spent = 0
        self.anchors: dict[str, tuple[Any, int]] = {}
        self._scalar = yaml.SafeLoader("")  # used only for its scalar constructors

    def _spend(self, n: int, line: int) -> None:
        self.spent += n
        if self.spent > MAX_NODES:
            raise YamlSourceError(
                f"document expands to over {MAX_NODES:,} nodes (a contract has hundreds; "
                "an alias bomb or a generated file?): refusing to build it",
                line,
                "alias-bomb",
            )

    def run(self, loader: Any) -> Any:
        stack: list[_Frame] = []
        root: list[Any] = []
        documents = 0
        while True:
            event = loader.get_event()
            line = event.start_mark.line + 1 if event.start_mark else 1
            if isinstance(event, yaml.StreamEndEvent):
                break
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise YamlSourceError(
                        "YAML syntax: more than one YAML document in the file (a contract is "
                        "one document)",
                        line,
                    )
                continue
            if isinstance(event, (yaml.StreamStartEvent, yaml.DocumentEndEvent)):
                continue
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if event.tag not in _COLLECTION_TAGS[type(event)]:
                    raise YamlSourceError(
                        f"unsupported YAML tag {event.tag!r} (contracts hold plain data)",
                        line,
                        "yaml-tag",
                    )
                if len(stack) >= MAX_DEPTH:
                    raise YamlSourceError(
                        f"nesting deeper than {MAX_DEPTH} levels (a contract needs a handful)",
                        line,
                        "yaml-depth",
                    )
                self._spend(1, line)
                path = self._child_path(stack, line)
                self.lines.setdefault(path, line)
                data: Any = {} if isinstance(event, yaml.MappingStartEvent) else []
                if event.anchor is not None:
                    self.anchors[event.anchor] = (_BUILDING, 0)
                stack.append(_Frame(data, path, line, event.anchor, self.spent))
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                frame = stack.pop()
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = (frame.data, self.spent - frame.spent_at + 1)
                self._attach(stack, root, frame.data, frame.line, is_scalar=False)
                continue
            if isinstance(event, yaml.AliasEvent):
                value, size = self.anchors.get(event.anchor or "", (None, -1))
                if value is _BUILDING:
                    raise YamlSourceError(
                        f"alias *{event.anchor} refers to a node that contains it "
                        "(a recursive structure is not data)",
                        line,
                        "yaml-alias",
                    )
                if size < 0:
                    raise YamlSourceError(
                        f"alias *{event.anchor} names no anchor defined before it",
                        line,
                        "yaml-syntax",
                    )
                self._spend(size, line)
                self._attach(
                    stack, root, value, line, is_scalar=not isinstance(value, (dict, list))
                )
                continue
            # a scalar
            self._spend(1, line)
            value, tag = self._scalar_value(loader, event, line)
            if event.anchor is not None:
                self.anchors[event.anchor] = (value, 1)
            self._attach(stack, root, value, line, is_scalar=True, tag=tag)
        if not root:
            raise YamlSourceError("file is empty", rule="top-level")
        return root[0]

    def _child_path(self, stack: list[_Frame], line: int) -> JsonPath:
        if not stack:
            return ()
        top = stack[-1]
        if isinstance(top.data, list):
            return (*top.path, len(top.data))
        if top.key is None:
            raise YamlSourceError("mapping key is not a scalar", line, "yaml-syntax")
        if top.key is _MERGE:
            return top.path
        return (*top.path, top.key)

    def _attach(
        self,
        stack: list[_Frame],
        root: list[Any],
        value: Any,
        line: int,
        is_scalar: bool,
        tag: str | None = None,
    ) -> None:
        if not stack:
            root.append(value)
            self.lines.setdefault((), line)
            return
        top = stack[-1]
        if isinstance(top.data, list):
            self.lines.setdefault((*top.path, len(top.data)), line)
            top.data.append(value)
            return
        if top.key is None:  # this node is a key
            if not is_scalar:
                raise YamlSourceError("mapping key is not a scalar", line, "yaml-syntax")
            if tag == _TAG + "merge":
                top.key = _MERGE
                return
            key = value if isinstance(value, str) else str(value)
            if isinstance(value, bool):
                key = str(value).lower()
            if key in top.first_line:
                where = ".".join(str(p) for p in top.path) or "top level"
                self.problems.append(
                    SourceProblem(
                        line,
                        "duplicate-key",
                        f"duplicate key {key!r} in {where} (first at line "
                        f"{top.first_line[key]}); YAML readers silently keep only one of them",
                    )
                )
                top.key = _Duplicate(key)
                return
            top.first_line[key] = line
            key_path = (*top.path, key)
            self.lines[key_path] = line
            top.key = key
            return
        key, top.key = top.key, None
        if key is _MERGE:
            sources = value if isinstance(value, list) else [value]
            for source in sources:
                if not isinstance(source, dict):
                    raise YamlSourceError("merge key '<<' needs a mapping", line, "yaml-syntax")
                for k, v in source.items():
                    top.data.setdefault(k, v)
            return
        if isinstance(key, _Duplicate):
            return  # the first one is kept; the problem is recorded
        top.data[key] = value

    def _scalar_value(self, loader: Any, event: Any, line: int) -> tuple[Any, str]:
        tag = event.tag
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag in (_TAG + "str", _TAG + "timestamp", _TAG + "binary"):
            return event.value, tag  # dates stay text: contracts are JSON-shaped data
        if tag == _TAG + "merge":
            return event.value, tag
        if tag not in (_TAG + "int", _TAG + "float", _TAG + "bool", _TAG + "null"):
            raise YamlSourceError(
                f"unsupported YAML tag {tag!r} (contracts hold plain data)", line, "yaml-tag"
            )
        if tag == _TAG + "int" and len(event.value) > MAX_INT_CHARS:
            raise YamlSourceError(
                f"integer of {len(event.value):,} characters (over {MAX_INT_CHARS}): "
                "not a value a contract holds",
                line,
                "yaml-value",
            )
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            return self._scalar.construct_object(node), tag
        except (ValueError, OverflowError, yaml.YAMLError) as exc:
            raise YamlSourceError(
                f"unreadable {tag[len(_TAG) :]} value: {exc}", line, "yaml-value"
            ) from None


class _Duplicate:
    """The key of a duplicate entry: its value is read (for errors) and dropped."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key
