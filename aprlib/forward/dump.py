"""Activation dumps: another engine's activations, named by capture point, read for bisect.

A dump is a safetensors file (docs/activation-dump.md): one tensor per capture point (or
per engine tensor, translated by a ``PointMap``), and in ``__metadata__`` the token ids the
engine ran, its name and version, and per tensor an optional layout and scope. Any
language that can write a JSON header and raw bytes can write one, so a user's C++, Rust or
CUDA engine can be bisected against the reference forward without Python bindings.

Layouts are declared, never guessed: ``[tokens, heads, head_dim]`` lists a tensor's
dimensions in numpy (row-major) order, ``ne[head_dim, heads, tokens]`` in GGML's ``ne[]``
order (the dimensions reversed). A dimension may be a product, its names outer first in
both notations (``ne[heads*head_dim, tokens]`` is ``[tokens, heads*head_dim]``), and
``batch`` (size 1) may lead. A tensor whose shape contradicts its declared layout is refused
with an error naming the entry; a point the dump does not hold is listed as absent, never an
error (a dump that holds no point at all is an error: nothing would be judged).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aprlib.errors import ModelFileError

if TYPE_CHECKING:
    import torch

    from aprlib.config.modelconfig import ModelConfig

DUMP_VERSION = "1"
SCOPES = ("all", "last")
DIM_NAMES = (
    "batch",
    "tokens",
    "hidden",
    "heads",
    "head_dim",
    "intermediate",
    "vocab",
    "experts",
)
#: attn.{q,k,v}.<these> are [tokens, heads, head_dim]
HEADED = ("pre_bias", "post_bias", "norm", "rope")


class DumpError(ModelFileError):
    """An activation dump, or a map over one, that cannot be read as declared."""


# --- canonical layouts -----------------------------------------------------------------------


def canonical_dims(point: str) -> tuple[str, ...]:
    """The canonical dimensions of a capture point's tensor in a dump (batch dropped)."""
    leaf = point.split(".", 2)[-1] if point.startswith("layers.") else point
    if leaf == "attn.scores":
        return ("heads", "tokens", "tokens")
    if leaf == "attn.out" or (leaf.startswith("attn.") and leaf.split(".")[-1] in HEADED):
        return ("tokens", "heads", "head_dim")
    if leaf in ("mlp.gate", "mlp.up", "mlp.swiglu"):
        return ("tokens", "intermediate")
    if leaf == "logits":
        return ("tokens", "vocab")
    if leaf == "mlp.router":  # a mixture's router: a logit per expert
        return ("tokens", "experts")
    return ("tokens", "hidden")


def dim_sizes(point: str, config: ModelConfig, n_tokens: int) -> dict[str, int]:
    """What each dimension name means at ``point``: ``heads`` is the point's own head count."""
    kv = ".attn.k." in point or ".attn.v." in point
    return {
        "batch": 1,
        "tokens": n_tokens,
        "hidden": config.hidden_size,
        "heads": config.num_key_value_heads if kv else config.num_attention_heads,
        "head_dim": config.attention_head_dim,
        "intermediate": config.intermediate_size,
        "vocab": config.vocab_size,
        "experts": config.num_experts or 0,
    }


@dataclass(frozen=True)
class Layout:
    """A declared layout: each dimension a product of names, in numpy order."""

    dims: tuple[tuple[str, ...], ...]
    text: str

    @classmethod
    def parse(cls, text: str, where: str) -> Layout:
        spec = text.strip()
        ggml = spec.startswith("ne[")
        body = spec[2:] if ggml else spec
        if not (body.startswith("[") and body.endswith("]")):
            raise ValueError(f"{where}: layout {text!r} is not '[d0, d1, ...]' or 'ne[...]'")
        dims = []
        for part in body[1:-1].split(","):
            names = tuple(n.strip() for n in part.split("*"))
            unknown = [n for n in names if n not in DIM_NAMES]
            if unknown or not all(names):
                raise ValueError(
                    f"{where}: layout {text!r}: unknown dimension {part.strip()!r} "
                    f"(known: {', '.join(DIM_NAMES)})"
                )
            dims.append(names)
        if ggml:
            dims.reverse()
        return cls(tuple(dims), text)

    def atoms(self) -> list[str]:
        return [n for dim in self.dims for n in dim]


def to_canonical(
    array: np.ndarray, layout: Layout | None, point: str, sizes: Mapping[str, int], where: str
) -> np.ndarray:
    """``array`` (declared ``layout``) rearranged into ``point``'s canonical layout.

    Raises ``ValueError`` naming ``where`` when the shape contradicts the declaration or the
    declaration does not hold the point's dimensions.
    """
    canon = canonical_dims(point)
    if layout is None:  # undeclared: the canonical layout, or its heads merged
        layout = Layout(tuple((d,) for d in canon), "canonical")
        if len(canon) == 3 and canon[0] == "tokens" and array.ndim == 2:
            layout = Layout((("tokens",), ("heads", "head_dim")), "[tokens, heads*head_dim]")
    want = [tuple(sizes[n] for n in dim) for dim in layout.dims]
    expected = tuple(math.prod(w) for w in want)
    if tuple(array.shape) != expected:
        raise ValueError(
            f"{where}: shape {tuple(array.shape)} contradicts its declared layout "
            f"{layout.text} = {expected} at {point}"
        )
    atoms = [n for n in layout.atoms() if n != "batch"]
    order = list(canon)
    if point.endswith("attn.scores"):  # tokens twice: queries then keys, in declared order
        if sorted(atoms) != sorted(order):
            raise ValueError(f"{where}: layout {layout.text} does not hold {point}'s {order}")
        perm = [i for i, n in enumerate(atoms) if n == "heads"] + [
            i for i, n in enumerate(atoms) if n == "tokens"
        ]
    else:
        if sorted(atoms) != sorted(order):
            raise ValueError(
                f"{where}: layout {layout.text} has dimensions {atoms}; {point} has {order}"
            )
        perm = [atoms.index(n) for n in order]
    atomic = array.reshape([sizes[n] for n in layout.atoms() if n != "batch"] or [1])
    return np.ascontiguousarray(atomic.transpose(perm))


# --- engine-name maps ------------------------------------------------------------------------


@dataclass(frozen=True)
class MapEntry:
    name: str  # engine tensor name, ``{layer}`` standing for a layer index
    point: str  # capture point, ``{layer}`` likewise
    layout: Layout | None
    scope: str = "all"
    nth: int = 1

    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.name).replace(r"\{layer\}", r"(?P<layer>\d+)") + r"\Z")


@dataclass(frozen=True)
class PointMap:
    """Engine tensor names → capture points, each with its declared layout and scope."""

    engine: str
    entries: tuple[MapEntry, ...]

    @classmethod
    def load(cls, path: Path | str) -> PointMap:
        from ruamel.yaml import YAML, YAMLError

        path = Path(path)
        try:
            data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, YAMLError) as exc:
            detail = " ".join(str(exc).split())  # a YAML error spans lines: the report is one
            raise DumpError(path, f"cannot read the map: {detail}") from None
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise DumpError(path, str(exc)) from None

    @classmethod
    def from_dict(cls, data: Any) -> PointMap:
        if not isinstance(data, dict) or not isinstance(data.get("points"), list):
            raise ValueError("a map is a mapping with a 'points' list")
        entries = []
        for i, raw in enumerate(data["points"]):
            where = f"points[{i}]"
            if not isinstance(raw, dict):
                raise ValueError(f"{where}: not a mapping")
            name, point = raw.get("name"), raw.get("point")
            if not isinstance(name, str) or not isinstance(point, str):
                raise ValueError(f"{where}: 'name' and 'point' must be strings")
            where = f"{where} ({name})"
            if ("{layer}" in name) != ("{layer}" in point):
                raise ValueError(f"{where}: '{{layer}}' must be in both name and point or neither")
            scope, nth = raw.get("scope", "all"), raw.get("nth", 1)
            if scope not in SCOPES:
                raise ValueError(f"{where}: scope {scope!r} is not one of {SCOPES}")
            if not isinstance(nth, int) or isinstance(nth, bool) or nth < 1:
                raise ValueError(f"{where}: nth {nth!r} is not a positive integer")
            layout = raw.get("layout")
            if layout is not None and not isinstance(layout, str):
                raise ValueError(f"{where}: layout must be a string")
            parsed = Layout.parse(layout, where) if layout else None
            entries.append(MapEntry(name, point, parsed, scope, nth))
        engine = data.get("engine", "")
        return cls(str(engine), tuple(entries))

    def resolve(self, engine_name: str, nth: int = 1) -> tuple[str, MapEntry] | None:
        """The capture point an engine tensor stands for, or None when the map has none."""
        for entry in self.entries:
            if entry.nth != nth:
                continue
            match = entry.pattern().match(engine_name)
            if match:
                layer = match.groupdict().get("layer")
                point = entry.point.replace("{layer}", str(int(layer))) if layer else entry.point
                return point, entry
        return None


def nth_name(name: str, nth: int) -> str:
    """How the ``nth`` (1-based) tensor of an engine name is stored in a dump file."""
    return name if nth == 1 else f"{name}#{nth}"


# --- reading ----------------------------------------------------------------------------------


@dataclass
class ActivationDump:
    """A dump translated to capture points: canonical layouts, float64-comparable."""

    path: Path | None
    tokens: list[int]
    engine: str
    engine_version: str
    points: dict[str, torch.Tensor] = field(default_factory=dict)
    scopes: dict[str, str] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # tensors that map to no point


def place(
    found: dict[str, tuple[np.ndarray, Layout | None, str, str]],
    config: ModelConfig,
    n_tokens: int,
    source: Path | str,
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Canonical tensors per point from ``point -> (array, layout, scope, where)``."""
    import torch

    from aprlib.forward.model import points_of

    graph = points_of(config)
    points: dict[str, torch.Tensor] = {}
    scopes: dict[str, str] = {}
    for point, (array, layout, scope, where) in found.items():
        if point not in graph:
            raise DumpError(source, f"{where}: {point!r} is not a capture point of this model")
        sizes = dim_sizes(point, config, 1 if scope == "last" else n_tokens)
        try:
            canon = to_canonical(array, layout, point, sizes, where)
        except ValueError as exc:
            raise DumpError(source, str(exc).removeprefix(f"{where}: "), tensor=where) from None
        points[point] = torch.from_numpy(canon)
        scopes[point] = scope
    absent = [p for p in graph if p not in points]
    return points, scopes, absent


def apply_map(
    raw: Mapping[str, list[np.ndarray]],
    point_map: PointMap,
    config: ModelConfig,
    n_tokens: int,
    source: str = "engine",
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str], list[str]]:
    """An engine's captures (several tensors per name, in evaluation order) as points.

    Returns (points, scopes, absent points, engine names the map does not place).
    """
    found: dict[str, tuple[np.ndarray, Layout | None, str, str]] = {}
    ignored = []
    for name, arrays in raw.items():
        for nth, array in enumerate(arrays, 1):
            hit = point_map.resolve(name, nth)
            if hit is None:
                ignored.append(nth_name(name, nth))
                continue
            point, entry = hit
            found[point] = (array, entry.layout, entry.scope, f"{nth_name(name, nth)} -> {point}")
    if not found:
        raise nothing_placed(source, ignored)
    points, scopes, absent = place(found, config, n_tokens, source)
    return points, scopes, absent, ignored


def nothing_placed(source: Path | str, ignored: list[str]) -> DumpError:
    """A dump none of whose tensors is at a capture point: nothing to judge is no verdict
    (a bisect over it would pass every point as absent)."""
    names = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
    return DumpError(
        source,
        "no tensor is at a capture point of this model"
        + (
            f" ({len(ignored)} not placed: {names}; name capture points, or give a --map)"
            if ignored
            else " (the dump holds no tensors)"
        ),
    )


def _metadata_tokens(meta: Mapping[str, str], path: Path, vocab: int) -> list[int]:
    raw = meta.get("apr.tokens")
    try:
        tokens = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        tokens = None
    if not isinstance(tokens, list) or not tokens:
        raise DumpError(path, "apr.tokens is not a non-empty JSON list", field="apr.tokens")
    for t in tokens:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
            raise DumpError(
                path, f"token {t!r} is not an id below the vocabulary {vocab}", field="apr.tokens"
            )
    return tokens


def read_dump(
    path: Path | str, config: ModelConfig, point_map: PointMap | None = None
) -> ActivationDump:
    """A dump file, its tensors placed at capture points (names direct or through the map)."""
    import torch
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            if meta.get("apr.dump") != DUMP_VERSION:
                raise DumpError(
                    path,
                    f"not an activation dump of version {DUMP_VERSION} "
                    f"(apr.dump = {meta.get('apr.dump')!r})",
                    field="apr.dump",
                )
            tokens = _metadata_tokens(meta, path, config.vocab_size)
            found: dict[str, tuple[np.ndarray, Layout | None, str, str]] = {}
            ignored = []
            for name in names:
                base, _, nth_text = name.partition("#")
                scope = meta.get(f"apr.scope.{name}", "all")
                layout_text = meta.get(f"apr.layout.{name}")
                point, layout = name, None
                if point_map is not None and not _is_point(name, config):
                    hit = point_map.resolve(base, int(nth_text) if nth_text.isdigit() else 1)
                    if hit is None:
                        ignored.append(name)
                        continue
                    point, entry = hit  # the file's own apr.layout/apr.scope win (below)
                    layout, scope = entry.layout, meta.get(f"apr.scope.{name}", entry.scope)
                elif not _is_point(name, config):
                    ignored.append(name)
                    continue
                if layout_text is not None:
                    try:
                        layout = Layout.parse(layout_text, name)
                    except ValueError as exc:
                        raise DumpError(path, str(exc), tensor=name) from None
                if scope not in SCOPES:
                    raise DumpError(path, f"scope {scope!r} is not one of {SCOPES}", tensor=name)
                if point in found:
                    raise DumpError(path, f"{point} is given twice", tensor=name)
                tensor = f.get_tensor(name)
                if not tensor.is_floating_point():
                    raise DumpError(path, f"dtype {tensor.dtype} is not a float", tensor=name)
                wide = tensor.dtype == torch.float64
                array = tensor.numpy() if wide else tensor.float().numpy()
                found[point] = (array, layout, scope, name)
    except SafetensorError as exc:
        raise DumpError(path, f"not a readable safetensors file: {exc}") from None
    except OSError as exc:
        raise DumpError(path, f"cannot read: {exc.strerror or exc}") from None
    if not found:
        raise nothing_placed(path, ignored)
    points, scopes, absent = place(found, config, len(tokens), path)
    return ActivationDump(
        path,
        tokens,
        meta.get("apr.engine", ""),
        meta.get("apr.engine_version", ""),
        points,
        scopes,
        absent,
        ignored,
    )


def _is_point(name: str, config: ModelConfig) -> bool:
    from aprlib.forward.model import points_of

    return name in points_of(config)


def is_dump(path: Path | str) -> bool:
    """Whether ``path`` is a safetensors file whose metadata says it is an activation dump."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            size = int.from_bytes(head, "little")
            if not 2 <= size <= 100 << 20:
                return False
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and "apr.dump" in meta


# --- writing ----------------------------------------------------------------------------------


#: numpy dtypes a dump may hold, by their safetensors names
DUMP_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<f8"): "F64"}


def write_dump(
    path: Path | str,
    tokens: list[int],
    tensors: Mapping[str, np.ndarray],
    engine: str = "",
    engine_version: str = "",
    layouts: Mapping[str, str] | None = None,
    scopes: Mapping[str, str] | None = None,
) -> Path:
    """Write a dump whole or not at all: a crash leaves no half-written file at ``path``.

    The safetensors header and each array's own memory go straight to the file (no
    serialised copy of the activations, which ``safetensors.numpy.save_file`` makes), and
    the file is renamed into place without an fsync: a dump is scratch that its engine
    writes again in seconds, and syncing hundreds of MB cost five times the write.
    """
    from aprlib.formats.atomic import atomic_output

    meta = {
        "apr.dump": DUMP_VERSION,
        "apr.tokens": json.dumps([int(t) for t in tokens]),
        "apr.engine": engine,
        "apr.engine_version": engine_version,
    }
    for name, text in (layouts or {}).items():
        meta[f"apr.layout.{name}"] = text
    for name, scope in (scopes or {}).items():
        meta[f"apr.scope.{name}"] = scope
    header: dict[str, Any] = {"__metadata__": meta}
    arrays = []
    offset = 0
    for name, values in tensors.items():
        array = np.ascontiguousarray(values)
        kind = DUMP_DTYPES.get(array.dtype) if array.dtype.byteorder != ">" else None
        if kind is None:
            raise ValueError(f"{name}: dtype {array.dtype} is not float32, float16 or float64")
        header[name] = {
            "dtype": kind,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        arrays.append(array)
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    path = Path(path)
    with atomic_output(path, durable=False) as tmp, open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for array in arrays:
            f.write(array.data.cast("B"))
    return path
