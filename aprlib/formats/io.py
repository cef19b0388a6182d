"""``open_model(path)``: safetensors (one file or a sharded folder), GGUF and APR alike.

The format is told by magic bytes, never by the file name; each format's reader lives in
``aprlib.formats``. Every tensor is exposed under its canonical (HF) name with its logical
row-major shape and dtype (see ``aprlib.formats.modelfile``).
"""

from __future__ import annotations

from pathlib import Path

from aprlib.errors import ModelFileError
from aprlib.formats.apr import MAGIC, MAGIC_V1, open_apr
from aprlib.formats.filesource import FileSource, paused_gc
from aprlib.formats.gguf import open_gguf
from aprlib.formats.modelfile import EMBED, LM_HEAD, Model, Tensor, model_from_arrays
from aprlib.formats.safetensors import open_safetensors

__all__ = ["EMBED", "LM_HEAD", "Model", "Tensor", "model_from_arrays", "open_model", "sniff"]


def sniff(path: Path) -> str:
    """The format of ``path`` from its first bytes (a folder is a sharded safetensors)."""
    path = Path(path)
    if path.is_dir():
        return "safetensors"
    with FileSource(path) as src:  # non-blocking, regular files only: a FIFO cannot hang
        head = src.read(0, min(src.size, 9), field="magic").tobytes()
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] in (MAGIC, MAGIC_V1):
        return "apr"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    raise ModelFileError(
        path,
        f"unrecognised format (first bytes {head[:8]!r}); expected safetensors, GGUF or APR",
        field="magic",
    )


def open_model(path: Path | str, mapped: bool = False, any_architecture: bool = False) -> Model:
    """Open any supported model file or folder. Tensors are read with ``pread`` into owned
    buffers (a file that changes gives ``FileChangedError``); ``mapped=True`` makes them
    zero-copy views of a memory map instead, for a caller that owns the file (see
    ``aprlib.formats.filesource``). ``any_architecture``: a family this library cannot run
    opens with no config and its tensors as stored (``metadata["aprlib.unsupported"]``
    says why), for listing; every other check still applies."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(path, "no such file or directory")
    kind = sniff(path)
    with paused_gc():
        if kind == "apr":
            return open_apr(path, mapped)
        if kind == "gguf":
            return open_gguf(path, mapped, any_architecture)
        return open_safetensors(path, mapped, any_architecture)
