"""``apr qa``: named PASS/FAIL/SKIP gates with their numbers; any FAIL fails the run.

The gates and the defect each is for: ``load`` (weights disagree with the config),
``tensors`` (NaN/Inf), ``zeros`` (a weight mostly zeros), ``embedding_rows`` (constant or
dead rows), ``std_range`` (a tensor far outside the family's typical spread: a dtype
mislabel, a scaled bias), ``dtype_label`` (half-precision bytes that are plausible weights
only under the other half type: "this looks like BF16 data tagged F16"), ``logits``
(non-finite or flat logits on a fixed prompt), ``loss`` (a token stream's loss not below
ln(vocab): a transposed, mis-biased or mis-roped forward), ``round_trip`` (APR and GGUF
copies give the same logits) and ``backend_parity`` (llama.cpp on the GGUF copy agrees
within the dtype's bound).
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: generous per-kind spreads (std of the values); published Qwen2.5/Llama-3.2 weights sit
#: well inside them, while a BF16/F16 mislabel or a 100x-scaled tensor falls outside
TYPICAL_STD = {
    "embedding": (1e-4, 1.0),
    "linear": (1e-4, 1.0),
    "bias": (0.0, 20.0),
    "norm": (0.0, 20.0),
}
DEAD_ROW_SHARE = 0.01
ZERO_SHARE = 0.5
PROMPT_LENGTH = 16


@dataclass
class Gate:
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str
    numbers: dict[str, Any]


def _kind(name: str, shape: tuple[int, ...]) -> str:
    if "embed_tokens" in name:
        return "embedding"
    if name.endswith(".bias"):
        return "bias"
    if "norm" in name:
        return "norm"
    return "linear" if len(shape) == 2 else "norm"


def tensor_gates(model: Any) -> list[Gate]:
    """NaN/Inf, zero share, dead embedding rows and typical spread, tensor by tensor."""
    nonfinite, zeros, out_of_range = [], [], []
    dead = {"rows": 0, "share": 0.0}
    for t in model:
        values = t.to_float32()
        bad = int((~np.isfinite(values)).sum())
        if bad:
            nonfinite.append(f"{t.name} ({bad})")
            continue
        if values.ndim == 2:
            share = float((values == 0).mean())
            if share > ZERO_SHARE:
                zeros.append(f"{t.name} ({share:.0%})")
        kind = _kind(t.name, t.shape)
        std = float(values.std())
        low, high = TYPICAL_STD[kind]
        if not low <= std <= high:
            out_of_range.append(f"{t.name} std {std:.3g} (typical {low:g}..{high:g})")
        if kind == "embedding":
            constant = int((values.std(axis=1) == 0).sum())
            dead = {"rows": constant, "share": constant / values.shape[0]}
    return [
        Gate(
            "tensors",
            "FAIL" if nonfinite else "PASS",
            "NaN/Inf in " + ", ".join(nonfinite[:5]) if nonfinite else "all values finite",
            {"nonfinite_tensors": len(nonfinite)},
        ),
        Gate(
            "zeros",
            "FAIL" if zeros else "PASS",
            "mostly zeros: " + ", ".join(zeros[:5])
            if zeros
            else f"no weight over {ZERO_SHARE:.0%} zeros",
            {"tensors": len(zeros)},
        ),
        Gate(
            "embedding_rows",
            "FAIL" if dead["share"] > DEAD_ROW_SHARE else "PASS",
            f"{dead['rows']} constant rows ({dead['share']:.2%}; limit {DEAD_ROW_SHARE:.0%})",
            dead,
        ),
        Gate(
            "std_range",
            "FAIL" if out_of_range else "PASS",
            "; ".join(out_of_range[:5]) if out_of_range else "every tensor in its typical spread",
            {"tensors": len(out_of_range)},
        ),
        dtype_label_gate(model),
    ]


def suspected_mislabel(t: Any) -> str | None:
    """``"BF16 data tagged F16"`` when a half-precision tensor's bytes are no plausible
    weights under its own tag and plausible under the other half type, else None. The
    plausibility test is ``apr diff``'s DTYPE_MISLABEL one (aprlib.compare.mislabel)."""
    from aprlib.compare.mislabel import plausible_as
    from aprlib.formats.dtypes import OTHER_HALF

    other = OTHER_HALF.get(t.dtype)
    if other is None:
        return None
    raw = np.asarray(t.raw()).view(np.uint8).reshape(-1)
    if plausible_as(raw, t.dtype) or not plausible_as(raw, other):
        return None
    return f"{other.name} data tagged {t.dtype.name}"


def dtype_label_gate(model: Any) -> Gate:
    """Each F16/BF16 tensor read both ways: one whose own tag gives no plausible weights
    and whose other reading does is named a suspected mislabel."""
    found = []
    for t in model:
        guess = suspected_mislabel(t)
        if guess is not None:
            found.append(f"{t.name}: this looks like {guess}")
    return Gate(
        "dtype_label",
        "FAIL" if found else "PASS",
        "; ".join(found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")
        if found
        else "every half-precision tensor plausible under its own tag",
        {"tensors": len(found)},
    )


def prompt_tokens(vocab: int) -> list[int]:
    """A fixed prompt: spread over the vocabulary, the same on every run."""
    return [(7 + 131 * i) % vocab for i in range(PROMPT_LENGTH)]


def logits_gate(logits: np.ndarray) -> Gate:
    finite = bool(np.isfinite(logits).all())
    std = float(logits.std()) if finite else math.nan
    last = logits[-1]
    peak = float((last.max() - last.mean()) / last.std()) if finite and last.std() > 0 else math.nan
    ok = finite and std > 1e-3
    return Gate(
        "logits",
        "PASS" if ok else "FAIL",
        f"finite {finite}, std {std:.3g}, peak-to-mean {peak:.3g} sd (last token)",
        {"finite": finite, "std": std, "peak_to_mean": peak},
    )


def loss_gate(net: Any, stream: list[int] | None, max_loss: float | None = None) -> Gate:
    """Loss on ``stream`` below ``max_loss`` (default ln(vocab): no better than guessing)."""
    import torch

    vocab = net.config.vocab_size
    bound = math.log(vocab) if max_loss is None else max_loss
    if not stream:
        return Gate("loss", "SKIP", "no --stream given", {"ln_vocab": math.log(vocab)})
    with torch.no_grad():
        loss = float(net.loss(torch.tensor([stream])))
    ok = math.isfinite(loss) and loss < bound
    return Gate(
        "loss",
        "PASS" if ok else "FAIL",
        f"loss {loss:.4f} vs bound {bound:.4f} (ln(vocab) {math.log(vocab):.4f}) "
        f"on {len(stream)} tokens",
        {"loss": loss, "bound": bound, "ln_vocab": math.log(vocab), "tokens": len(stream)},
    )


def round_trip_gate(
    model: Any, reference: np.ndarray, tokens: list[int], work: Path, stream: bool = False
) -> Gate:
    from aprlib.formats.conversion import write_model
    from aprlib.forward.logits import reference_logits

    diffs = {}
    for suffix in (".apr", ".gguf"):
        path = work / f"copy{suffix}"
        write_model(model, path, checked=True)
        logits = reference_logits(path, tokens, stream=stream)
        diffs[suffix[1:]] = float(np.abs(logits - reference).max())
    bound = 1e-5 * max(1.0, float(np.abs(reference).max()))
    ok = all(d <= bound for d in diffs.values())
    return Gate(
        "round_trip",
        "PASS" if ok else "FAIL",
        ", ".join(f"{k} max|Δ| {v:.3g}" for k, v in diffs.items()) + f" (bound {bound:.3g})",
        {**diffs, "bound": bound},
    )


def parity_gate(model: Any, reference: np.ndarray, tokens: list[int], work: Path) -> Gate:
    """llama.cpp on the GGUF copy against our reference, within the dtype's bound.

    llama.cpp that crashes or hangs (``OracleError``) gave no answer, which is no verdict
    on the model: the gate is SKIP (not checked), with the error as its reason, never FAIL."""
    import importlib.util

    from aprlib.errors import OracleError
    from aprlib.forward.logits import DTYPE_GATES, compare_logits, llamacpp_logits

    if importlib.util.find_spec("llama_cpp") is None:
        return Gate("backend_parity", "SKIP", "llama-cpp-python not installed", {})
    dtypes = {t.dtype.name.lower() for t in model if len(t.shape) == 2}
    worst = next((d for d in ("q4_k", "q8_0", "bf16", "f16") if d in dtypes), "f32")
    gates = DTYPE_GATES.get(worst, DTYPE_GATES["bf16"])
    try:
        theirs = llamacpp_logits(work / "copy.gguf", tokens)
    except OracleError as exc:
        return Gate(
            "backend_parity",
            "SKIP",
            f"not checked: {exc} (no verdict on the model)",
            {"oracle_error": type(exc).__name__, "signal": getattr(exc.signal, "name", None)},
        )
    except ValueError as exc:  # llama.cpp refused the file: its graph lacks what it holds
        return Gate(
            "backend_parity",
            "SKIP",
            f"not checked: llama.cpp refused the file: {_refusal(model, exc)} "
            "(no verdict on the model)",
            {"oracle_error": type(exc).__name__, "llama_cpp": str(exc)},
        )
    c = compare_logits(reference, theirs, tokens, tokens, gates)
    return Gate(
        "backend_parity",
        "PASS" if c.verdict == "PASS" else "FAIL",
        f"llama.cpp vs reference ({worst} bounds): KL {c.kl_mean:.3g}, top-1 {c.top1:.2f}, "
        f"NMSE {c.nmse:.3g}" + (f"; failed {', '.join(c.failed)}" if c.failed else ""),
        {"kl_mean": c.kl_mean, "top1": c.top1, "nmse": c.nmse, "dtype": worst},
    )


def _refusal(model: Any, exc: ValueError) -> str:
    """Why llama.cpp refused the GGUF copy: the config's own note that its graph "will
    refuse" such a file (``llama_cpp_graph_gaps``) where there is one, else its message."""
    from aprlib.config.modelconfig import llama_cpp_graph_gaps

    cfg = getattr(model, "config", None)
    notes = llama_cpp_graph_gaps(cfg) if cfg is not None else []
    refusing = [n for n in notes if "will refuse" in n]
    return "; ".join(refusing) if refusing else str(exc)


def run_qa(
    path: Path | str,
    stream: list[int] | None = None,
    parity: bool = True,
    max_loss: float | None = None,
    stream_weights: bool = False,
) -> list[Gate]:
    """Every gate on the model at ``path``; the forward gates need it to load first
    (``stream_weights``: read a layer at a time, for a model larger than memory)."""
    import torch

    from aprlib.config.modelconfig import ConfigError
    from aprlib.errors import ModelFileError, ShapeMismatchError
    from aprlib.formats.io import open_model
    from aprlib.forward.model import Transformer

    with open_model(path) as model:
        gates = tensor_gates(model)
        try:
            net = Transformer.from_file(model, stream=stream_weights)
        except (ShapeMismatchError, ModelFileError, ConfigError) as exc:
            gates.append(Gate("load", "FAIL", str(exc), {}))
            return gates
        gates.append(Gate("load", "PASS", "weights match the config", {}))
        tokens = prompt_tokens(net.config.vocab_size)
        with torch.no_grad():
            reference = net(torch.tensor([tokens]))[0].float().numpy()
        gates.append(logits_gate(reference))
        gates.append(loss_gate(net, stream, max_loss))
        del net
        steps: list[Callable[[Any, np.ndarray, list[int], Path], Gate]] = [
            functools.partial(round_trip_gate, stream=stream_weights)
        ]
        if parity:
            steps.append(parity_gate)
        with tempfile.TemporaryDirectory(prefix="apr-qa-") as work:
            for step in steps:
                gates.append(step(model, reference, tokens, Path(work)))
    return gates


def gates_json(gates: list[Gate]) -> dict[str, Any]:
    failed = [g.name for g in gates if g.status == "FAIL"]
    return {
        "verdict": "FAIL" if failed else "PASS",
        "failed": failed,
        "gates": [asdict(g) for g in gates],
    }
