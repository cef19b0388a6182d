"""Training checkpoints: the weights as an APR file, the optimiser state beside them.

Both are written atomically (temporary file, fsync, rename). The state names the weights
by a digest, so a pair torn by a kill between the two renames is refused on resume rather
than pairing step-N optimiser moments with step-M weights.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import torch

from aprlib.config.modelconfig import ModelConfig
from aprlib.formats.atomic import atomic_output
from aprlib.formats.dtypes import DType, from_float32
from aprlib.formats.io import LM_HEAD, model_from_arrays

CHECKPOINT_DTYPE = DType.F32  # lossless for the float32 weights that train


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: no state beside it, or state of other weights."""


def weights_digest(model: torch.nn.Module) -> int:
    """CRC32 over every parameter's float32 bytes: ties a sidecar to its weights."""
    crc = 0
    for name, p in sorted(model.state_dict().items()):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes(), crc)
    return crc


def sidecar(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".optim.pt")


def save_checkpoint(
    model: torch.nn.Module,
    config: ModelConfig,
    path: Path,
    tokenizer: dict[str, Any] | None,
    state: dict[str, Any],
) -> None:
    """The weights as APR (F32, atomic) and ``state`` beside them (atomic too).

    The sidecar names the weights by digest, so a pair torn by a kill between the two
    renames is refused on resume instead of pairing step-N moments with step-M weights.
    """
    from aprlib.formats.conversion import write_model

    arrays = {}
    for name, p in model.state_dict().items():
        if name == LM_HEAD and config.tie_word_embeddings:
            continue
        value = p.detach().to("cpu", torch.float32).contiguous().numpy()
        arrays[name] = (CHECKPOINT_DTYPE, value.shape, from_float32(value, CHECKPOINT_DTYPE))
    built = model_from_arrays(arrays, config, path=path)
    built.tokenizer = tokenizer
    write_model(built, path, fmt="apr")
    _atomic_torch_save({**state, "weights_digest": weights_digest(model)}, sidecar(path))


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def load_state(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    side = sidecar(path)
    if not side.is_file():
        raise CheckpointError(f"{side}: no optimiser state beside the checkpoint; cannot resume")
    try:
        state = torch.load(side, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a torn or foreign file
        raise CheckpointError(f"{side}: unreadable optimiser state: {exc}") from None
    if state.get("weights_digest") != weights_digest(model):
        raise CheckpointError(
            f"{side}: optimiser state (step {state.get('step')}) does not belong to the weights "
            f"in {path} (a save was interrupted?); cannot resume"
        )
    return state
