"""Logits from any backend, saved with their token ids, and compared the way llama.cpp does.

``compare_logits`` prints in one place what llama.cpp's model-conversion checks (NMSE, max
abs diff) and ``llama-perplexity --kl-divergence`` (KL, top-1 agreement, Δp) print. The
verdict comes from named gates, and the exit code from the verdict: a comparison can never
say PASS while a gate fails (llama.cpp's own compare script once printed success on a max
abs diff of 1.67). Logits of different token ids are never compared.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aprlib.errors import ModelFileError
from aprlib.forward.gates import Gated
from aprlib.forward.token_ids import check_token_ids

NPY_MAGIC = b"\x93NUMPY"


class TokenMismatchError(ValueError):
    """Two logit sets computed over different token ids: there is nothing to compare."""


# --- computing ---------------------------------------------------------------------------


def reference_logits(
    path: Path | str,
    tokens: list[int],
    backend: str = "reference",
    dtype: str = "float32",
    stream: bool = False,
) -> np.ndarray:
    """Our ``Transformer`` on the named ``Ops`` backend: float32 logits ``[T, vocab]``
    (``stream``: the weights read a layer at a time, for a model larger than memory)."""
    import torch

    from aprlib.forward.backends import make_ops
    from aprlib.forward.model import Transformer

    net = Transformer.from_file(
        path, dtype=getattr(torch, dtype), ops=make_ops(backend), stream=stream
    )
    check_token_ids(tokens, net.config.vocab_size, Path(path))
    with torch.no_grad():
        return net(torch.tensor([tokens])).float()[0].numpy()


def llamacpp_logits(
    path: Path | str, tokens: list[int], timeout: float | None = None
) -> np.ndarray:
    """llama.cpp (llama-cpp-python) at every position, F32 KV cache, on a GGUF file.

    It runs in a child process (``aprlib.forward.llamacpp``): a llama.cpp that crashes or hangs
    raises ``OracleCrashed`` / ``OracleTimeout`` here instead of taking this process with
    it. ``timeout`` in seconds (default ``APRLIB_LLAMACPP_TIMEOUT``, else 300)."""
    import importlib.util

    from aprlib.forward import llamacpp

    path = require_gguf(path)
    if importlib.util.find_spec("llama_cpp") is None:  # found, not imported: it runs elsewhere
        raise ModelFileError(path, "llama-cpp-python is not installed (the test extra)")
    return llamacpp.logits(path, tokens, timeout=timeout)


def require_gguf(path: Path | str) -> Path:
    """``path``, when it is a GGUF; llama.cpp runs nothing else (a folder, a safetensors or
    an APR file would fail inside its loader with a message naming none of this)."""
    from aprlib.formats.io import sniff

    path = Path(path)
    if sniff(path) != "gguf":
        raise ModelFileError(path, "llama.cpp runs GGUF files; `apr convert` it first")
    return path


def transformers_logits(path: Path | str, tokens: list[int]) -> np.ndarray:
    """transformers' own model class, built from our config and the file's (float32) weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from aprlib.config.modelconfig import to_hf
    from aprlib.formats.io import LM_HEAD, open_model

    with open_model(path) as model:
        if model.config is None:
            raise ModelFileError(model.path, "no architecture config", field="config")
        hf = to_hf(model.config)
        config = AutoConfig.for_model(hf.pop("model_type"), **hf)
        check_token_ids(tokens, model.config.vocab_size, model.path)
        net = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        state = {n: torch.from_numpy(t.to_float32().copy()) for n, t in model.tensors.items()}
        if model.tied:
            state[LM_HEAD] = state["model.embed_tokens.weight"]
        net.load_state_dict(state, strict=False)
    with torch.no_grad():
        return net(torch.tensor([tokens])).logits.float()[0].numpy()


def compute_logits(
    path: Path | str, tokens: list[int], backend: str = "reference", stream: bool = False
) -> np.ndarray:
    """Logits on any backend; ``stream`` applies to our forward (transformers holds every
    weight, and is refused for a model that must stream: ``transformers_logits``)."""
    if backend == "llama.cpp":
        return llamacpp_logits(path, tokens)
    if backend == "transformers":
        if stream:
            raise ModelFileError(
                Path(path),
                "transformers holds every weight in memory and this model must stream: "
                "use --backend reference (streamed), or --no-stream-weights to try anyway",
            )
        return transformers_logits(path, tokens)
    return reference_logits(path, tokens, backend, stream=stream)


# --- saving and loading ------------------------------------------------------------------


def save_logits(path: Path, logits: np.ndarray, tokens: list[int], source: dict[str, Any]) -> None:
    """``path`` (.npy, float32, never truncated) and ``path.json`` with the token ids; atomic."""
    from aprlib.formats.atomic import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(logits, dtype=np.float32))
    side = Path(f"{path}.json")
    with atomic_output(side) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"tokens": list(tokens), **source}, fh, indent=2)


def is_npy(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(6) == NPY_MAGIC
    except (IsADirectoryError, OSError):
        return False


def load_logits(path: Path) -> tuple[np.ndarray, list[int]]:
    """Saved logits and the token ids they were computed over (refused without them)."""
    side = Path(f"{path}.json")
    if not side.is_file():
        raise ModelFileError(path, f"no {side.name} beside it: the token ids are unknown")
    try:
        logits = np.load(path, allow_pickle=False)
        tokens = [int(t) for t in json.loads(side.read_text(encoding="utf-8"))["tokens"]]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ModelFileError(path, f"unreadable saved logits: {exc}") from None
    if logits.ndim != 2 or logits.shape[0] != len(tokens):
        raise ModelFileError(path, f"logits shape {logits.shape} for {len(tokens)} tokens")
    return logits.astype(np.float32, copy=False), tokens


# --- comparing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Gates:
    """A comparison passes when every bound holds (None: not gated)."""

    max_kl: float | None = 1e-4
    min_top1: float | None = 0.99
    max_nmse: float | None = 1e-4
    max_abs: float | None = None


#: bounds per dtype of the GGUF's 2-D weights, llama.cpp against our float32 forward. Measured
#: on tiny random Qwen2/Llama (hidden 256, 2 layers, 40 tokens): KL mean f32 ~2e-12, bf16
#: ~2e-4, q8_0 ~2.4e-3, q4_k ~0.2; top-1 f32 1.0, bf16 >= 0.925, q8_0 >= 0.85, q4_k >= 0.475.
#: Each bound is ~4x the worst KL seen (and top-1 floor ~0.1 below the worst), and each is
#: ordered by the dtype's rounding step (bf16 2^-8, q8_0 ~2^-8 of a block's range plus
#: llama.cpp's Q8 activations, q4_k ~2^-4): a wrong block layout is orders above its bound.
DTYPE_GATES: dict[str, Gates] = {
    "f32": Gates(max_kl=1e-9, min_top1=1.0, max_nmse=1e-9),
    "bf16": Gates(max_kl=1e-3, min_top1=0.85, max_nmse=1e-3),
    "q8_0": Gates(max_kl=1e-2, min_top1=0.75, max_nmse=1e-2),
    "q4_k": Gates(max_kl=0.8, min_top1=0.35, max_nmse=0.8),
}


@dataclass
class Comparison(Gated):
    tokens: int
    vocab: int
    nmse: float
    nmse_db: float
    max_abs: float
    kl_mean: float
    kl_max: float
    kl_direction: str
    top1: float
    top5_overlap: float
    dp_percentiles: dict[str, float]
    dp_rms: float
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict, "failed": self.failed}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def compare_logits(
    a: np.ndarray,
    b: np.ndarray,
    tokens_a: list[int],
    tokens_b: list[int],
    gates: Gates | None = None,
) -> Comparison:
    """Compare B against A (the reference); refuses unlike token ids or shapes."""
    if list(tokens_a) != list(tokens_b):
        first = next(
            (i for i, (x, y) in enumerate(zip(tokens_a, tokens_b, strict=False)) if x != y),
            min(len(tokens_a), len(tokens_b)),
        )
        raise TokenMismatchError(
            f"token ids differ (A has {len(tokens_a)}, B has {len(tokens_b)}; first "
            f"difference at position {first}): logits of different inputs are not compared"
        )
    if a.shape != b.shape:
        raise TokenMismatchError(f"logit shapes differ: A {a.shape}, B {b.shape}")
    gates = gates or Gates()
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    err = float(((a64 - b64) ** 2).sum())
    ref = float((a64**2).sum())
    nmse = err / ref if ref > 0 else (0.0 if err == 0 else math.inf)
    la, lb = _log_softmax(a), _log_softmax(b)
    pa = np.exp(la)
    kl = (pa * (la - lb)).sum(-1)
    top1 = float((a.argmax(-1) == b.argmax(-1)).mean())
    k = min(5, a.shape[-1])
    ta, tb = np.argsort(-a, -1)[:, :k], np.argsort(-b, -1)[:, :k]
    overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb, strict=True)]))
    nxt = np.asarray(tokens_a[1:], dtype=np.int64)
    rows = np.arange(len(nxt))
    dp = np.exp(lb[rows, nxt]) - pa[rows, nxt] if len(nxt) else np.zeros(0)
    pct = {f"p{q}": float(np.percentile(dp, q)) if dp.size else 0.0 for q in (1, 5, 50, 95, 99)}
    out = Comparison(
        tokens=a.shape[0],
        vocab=a.shape[1],
        nmse=nmse,
        nmse_db=10 * math.log10(nmse) if nmse > 0 else -math.inf,
        max_abs=float(np.abs(a64 - b64).max()) if a.size else 0.0,
        kl_mean=float(kl.mean()),
        kl_max=float(kl.max()),
        kl_direction="KL(A||B) = sum p_A log(p_A/p_B): A is the reference, in nats per token",
        top1=top1,
        top5_overlap=overlap,
        dp_percentiles=pct,
        dp_rms=float(np.sqrt((dp**2).mean())) if dp.size else 0.0,
    )
    finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
    out.gates["finite"] = {"value": finite, "bound": True, "pass": finite}
    for name, value, bound, below in (
        ("kl_mean", out.kl_mean, gates.max_kl, True),
        ("top1", out.top1, gates.min_top1, False),
        ("nmse", out.nmse, gates.max_nmse, True),
        ("max_abs", out.max_abs, gates.max_abs, True),
    ):
        if bound is not None:
            ok = value <= bound if below else value >= bound
            out.gates[name] = {"value": value, "bound": bound, "pass": bool(finite and ok)}
    return out
