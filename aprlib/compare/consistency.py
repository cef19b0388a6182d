"""Does a config agree with the weights it ships with? Each side is checked on its own.

A config whose ``num_key_value_heads`` says 4 beside k_proj rows that hold 2 heads loads,
runs and produces garbage; comparing the two configs would not see it when both files carry
the same wrong config. The weights' shapes are the testimony here; the check itself is
``aprlib.compare.shapes.contradictions``, the same one the loader fails fast on.
"""

from __future__ import annotations

from collections.abc import Iterator

from aprlib.compare.shapes import contradictions as _contradictions
from aprlib.formats.dtypes import OTHER_HALF, TORCH_DTYPES, DType
from aprlib.formats.io import Model


def contradictions(model: Model) -> Iterator[tuple[str, str, str]]:
    """(field, tensor, message) for every config field the tensors of ``model`` contradict."""
    if model.config is None:
        return
    shapes = {name: t.shape for name, t in model.tensors.items()}
    for c in _contradictions(model.config, shapes):
        yield c.field, c.tensor, c.message


def config_dtype(model: Model) -> DType | None:
    """The dtype a model's config says its weights are (``torch_dtype``), if it says."""
    name = getattr(model.config, "torch_dtype", None) if model.config else None
    return TORCH_DTYPES.get(str(name).removeprefix("torch.")) if name else None


def dtype_contradiction(model: Model) -> tuple[str, str, str] | None:
    """``torch_dtype: bfloat16`` over float tensors that are all F16 (or float16 over BF16):
    one of the two labels is wrong, and F16 bytes read as BF16 (or back) are garbage. F32
    storage under a half ``torch_dtype`` is an upcast, not a contradiction."""
    said = config_dtype(model)
    other = OTHER_HALF.get(said) if said is not None else None
    if said is None or other is None:
        return None
    counts: dict[DType, int] = {}
    for t in model.tensors.values():
        if t.dtype in TORCH_DTYPES.values():
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
    if counts.get(other, 0) == 0 or counts.get(said, 0) > 0:
        return None
    mix = ", ".join(f"{k.name} ×{n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    written = model.config.torch_dtype if model.config is not None else said
    return (
        "torch_dtype",
        "",
        f"torch_dtype: {written} but the tensors are {mix}, none {said.name}: either the "
        f"config or every tensor's dtype tag is wrong",
    )


def findings(model: Model) -> list[dict[str, str]]:
    """Every config-versus-weights contradiction ``apr inspect`` lists: the loader's
    (:func:`contradictions`, a shape its transpose named so), then the dtype label."""
    from aprlib.compare.shapes import expected_shapes

    out = []
    want: dict[str, tuple[int, ...]] = {}
    if model.config is not None:
        try:
            want = expected_shapes(model.config)
        except (ValueError, TypeError, ZeroDivisionError):
            want = {}
    for field, tensor, message in contradictions(model):
        held = model.tensors[tensor].shape if tensor in model.tensors else None
        implied = want.get(tensor)
        if held and implied and len(held) == 2 and tuple(held) == tuple(implied)[::-1]:
            message += (
                f" ({tensor} is {held[0]}x{held[1]}, the transpose of the "
                f"{implied[0]}x{implied[1]} the config implies: shapes swapped)"
            )
        out.append(
            {
                "class": "CONFIG_CONTRADICTS_WEIGHTS",
                "field": field,
                "tensor": tensor,
                "message": message,
            }
        )
    dtype = dtype_contradiction(model)
    if dtype is not None:
        out.append(
            {
                "class": "CONFIG_CONTRADICTS_WEIGHTS",
                "field": dtype[0],
                "tensor": dtype[1],
                "message": dtype[2],
            }
        )
    return out
