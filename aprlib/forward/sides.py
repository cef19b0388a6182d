"""The sides ``apr bisect`` can judge: a model file on an ``Ops`` backend, an activation
dump, llama.cpp's own graph, a transformers model.

Each returns a ``bisect.Side``: the weights the reference runs on (read by our readers),
and, for an outside engine, the activations it computed, placed at capture points in the
forward's own layout. Where the engine's names come from (a dump's tensor names, a
``--map``, llama.cpp's built-in map, transformers' module tree) is this module's concern;
how a side is judged is ``bisect``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aprlib.forward.bisect import Side, internal_layout
from aprlib.forward.dump import PointMap, nth_name, read_dump

if TYPE_CHECKING:
    from aprlib.forward.dump import ActivationDump

OUTSIDE_ENGINES = ("llama.cpp", "transformers")


def weights_name(path: Path | str) -> str:
    """Two sides over one file share their reference: the file's resolved path names it."""
    return str(Path(path).resolve())


def file_side(
    path: Path | str,
    backend: str = "reference",
    dtype: str = "float32",
    expect: str | None = None,
    stream: bool = False,
) -> Side:
    """A model file run by our forward on the ``backend`` ``Ops`` in ``dtype`` (``stream``:
    its weights read a layer at a time)."""
    from aprlib.forward.bisect import load_side

    net = load_side(path, backend, dtype, stream)
    return Side(f"{path} ({backend}, {dtype})", net, weights=weights_name(path), expect=expect)


def in_forward_layout(points: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An outside engine's canonical tensors (tokens first, no batch) in the forward's own
    layout (batch 1); half precision widened to float32 (exactly) for the statistics."""
    wide = (torch.float32, torch.float64)
    return {
        name: internal_layout(name, x if x.dtype in wide else x.float())
        for name, x in points.items()
    }


def dump_points(dump: ActivationDump) -> dict[str, torch.Tensor]:
    """A dump's canonical tensors in the forward's own layout (batch 1)."""
    return in_forward_layout(dump.points)


def dump_side(
    reference: Side, path: Path | str, point_map: PointMap | None = None, expect: str | None = None
) -> tuple[Side, ActivationDump]:
    """An activation dump, judged on the reference file's weights (the engine ran them)."""
    dump = read_dump(path, reference.net.config, point_map)
    engine = " ".join(filter(None, (dump.engine, dump.engine_version))) or "an engine"
    side = Side(
        f"{path} (dump by {engine})",
        reference.net,
        points=dump_points(dump),
        scopes=dump.scopes,
        weights=reference.weights,
        expect=expect,
        engine=engine,
    )
    return side, dump


def llamacpp_side(
    path: Path | str, tokens: list[int], expect: str | None = None, stream: bool = False
) -> Side:
    """llama.cpp's own graph on a GGUF, its named tensors placed by the built-in map; the
    reference runs on the same GGUF's weights as our reader decodes them."""
    from aprlib.forward.bisect import load_side
    from aprlib.forward.dump import apply_map
    from aprlib.forward.llamacpp import llamacpp_activations
    from aprlib.forward.llamacpp_points import point_map_for
    from aprlib.forward.logits import require_gguf

    require_gguf(path)
    net = load_side(path, stream=stream)  # held: zero-copy views of the file's pages
    raw = llamacpp_activations(path, tokens)
    point_map = PointMap.from_dict(point_map_for(net.config))
    points, scopes, _, _ = apply_map(raw, point_map, net.config, len(tokens), str(path))
    return Side(
        f"{path} (llama.cpp)",
        net,
        points=in_forward_layout(points),
        scopes=scopes,
        weights=weights_name(path),
        expect=expect,
        engine="llama.cpp",
        engine_names=engine_names(raw, point_map),
    )


def engine_names(raw: Mapping[str, list[Any]], point_map: PointMap) -> dict[str, str]:
    """Each placed point's name in the engine (``Kcur-1``, ``Qcur-0#2`` for the second
    tensor of that name), for the report to say what the engine calls it."""
    names = {}
    for name, arrays in raw.items():
        for nth in range(1, len(arrays) + 1):
            hit = point_map.resolve(name, nth)
            if hit is not None:
                names[hit[0]] = nth_name(name, nth)
    return names


def transformers_side(reference: Side, tokens: list[int], expect: str | None = None) -> Side:
    """transformers' own modules on the reference file's weights (a model built from our
    config and state dict), its points captured by hooks (``hf_capture``)."""
    from aprlib.errors import ModelMemoryError
    from aprlib.forward.hf_capture import capture_hf, hf_model_from

    if reference.net.streamed is not None:
        raise ModelMemoryError(
            Path(reference.weights or "model"),
            "transformers holds every weight in memory and this model must stream: "
            "bisect it against llama.cpp or a dump, or --no-stream-weights to try anyway",
        )
    model = hf_model_from(reference.net)
    captured = capture_hf(model, tokens)
    return Side(
        f"{reference.label.split(' (')[0]} (transformers)",
        reference.net,
        points=in_forward_layout(captured.points),
        weights=reference.weights,
        expect=expect,
        engine="transformers",
    )


def module_side(model: Any, tokens: list[int], expect: str | None = None) -> tuple[Side, Side]:
    """A transformers model the user holds (patched modules and all) and the reference
    ``Ops`` on its own weights: the two sides of ``bisect_module``."""
    from aprlib.forward.hf_capture import capture_hf, reference_from_hf

    dtype = next(model.parameters()).dtype
    # a half-precision model computes in it: its floor is the reference in that dtype
    expect = expect or {torch.bfloat16: "bf16", torch.float16: "f16"}.get(dtype)
    net = reference_from_hf(model)
    captured = capture_hf(model, tokens)
    reference = Side("reference", net)
    engine = type(model).__name__
    side = Side(
        engine,
        net,
        points=in_forward_layout(captured.points),
        weights=reference.weights_key(),
        expect=expect,
        engine=engine,
    )
    return reference, side


def bisect_module(model: Any, tokens: list[int], expect: str | None = None, **kwargs: Any) -> Any:
    """Bisect a transformers model (with whatever modules the user patched in) against the
    reference forward on its own weights: the first capture point its modules introduce a
    divergence at. ``kwargs`` go to ``bisect`` (``tolerance``, ``overrides``)."""
    from aprlib.forward.bisect import bisect

    reference, side = module_side(model, tokens, expect)
    with torch.no_grad():
        return bisect(reference, side, tokens, **kwargs)
