"""An engine that is not ours: a float32 numpy forward of the tiny Qwen2/Llama models.

It shares no code with ``aprlib.forward.model`` (it reads ``config.json`` and
``model.safetensors`` with the safetensors package's numpy loader) and computes every
capture point in the canonical layout of docs/activation-dump.md, so a dump it writes is
what a user's C++/Rust engine would write. ``BUGS`` are one planted bug per family, each
switched on by name; ``EXPECTED`` is the capture point a bisect must name for it.

``write_tiny`` writes the tiny models themselves (HF folder: config.json and
model.safetensors, as ``conftest.build_tiny`` does but without importing transformers):
every tensor random, norms and biases too, GQA, a non-square FFN.

Two ways out: ``write_points`` (capture-point names, optionally only some of them) and
``write_engine_names`` (llama.cpp-style names, GGML ``ne[]`` layouts, transposes and a
last-token-only tensor, with the ``--map`` YAML that places them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

F32 = np.float32

#: bug -> the capture point that introduces it (attn.scores first where the dump holds it)
EXPECTED = {
    "rope_theta": "layers.0.attn.q.rope",
    "gqa_mapping": "layers.0.attn.out",
    "attn_scale": "layers.0.attn.out",
    "causal_mask": "layers.0.attn.out",
    "norm_eps": "layers.0.attn_norm",
    "norm_one_plus": "layers.0.attn_norm",
    "gate_up_swapped": "layers.0.mlp.gate",
    "bias_twice": "layers.0.attn.q.post_bias",
}
BUGS = tuple(EXPECTED)
#: bugs that also change attn.scores (q·kᵀ/√d before the mask) when the engine dumps it
CHANGES_SCORES = ("gqa_mapping", "attn_scale")


TINY = {
    "vocab_size": 96,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
}
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}


def write_tiny(
    folder: Path, architecture: str = "qwen2", tied: bool = False, seed: int = 0
) -> Path:
    """A tiny random model as transformers saves it (config.json + model.safetensors)."""
    from safetensors.numpy import save_file

    c = {**TINY, "architectures": [ARCHITECTURES[architecture]], "model_type": architecture}
    c.update(tie_word_embeddings=tied, dtype="float32")
    c["rope_parameters"] = {"rope_theta": 10000.0, "rope_type": "default"}
    if architecture == "llama":
        c.update(attention_bias=False, mlp_bias=False, head_dim=16)
    else:
        c.update(use_sliding_window=False, sliding_window=None)
    h, inter, d = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // 4
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], h), "model.norm.weight": (h,)}
    if not tied:
        shapes["lm_head.weight"] = (c["vocab_size"], h)
    for i in range(c["num_hidden_layers"]):
        w = f"model.layers.{i}."
        shapes[w + "input_layernorm.weight"] = shapes[w + "post_attention_layernorm.weight"] = (h,)
        for name, rows in (("q", 4 * d), ("k", 2 * d), ("v", 2 * d), ("o", h)):
            shapes[w + f"self_attn.{name}_proj.weight"] = (rows, h)
            if architecture == "qwen2" and name != "o":
                shapes[w + f"self_attn.{name}_proj.bias"] = (rows,)
        shapes[w + "mlp.gate_proj.weight"] = shapes[w + "mlp.up_proj.weight"] = (inter, h)
        shapes[w + "mlp.down_proj.weight"] = (h, inter)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in shapes.items():  # norms around 1 with spread, so a dropped norm shows
        base, spread = (1.0, 0.5) if "norm" in name else (0.0, 0.08)
        tensors[name] = (base + rng.standard_normal(shape) * spread).astype(F32)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(c, indent=2))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@dataclass
class NumpyModel:
    config: dict
    weights: dict[str, np.ndarray]

    @classmethod
    def load(cls, folder: Path) -> NumpyModel:
        from safetensors.numpy import load_file

        config = json.loads((folder / "config.json").read_text())
        weights = {k: v.astype(F32) for k, v in load_file(folder / "model.safetensors").items()}
        return cls(config, weights)

    def get(self, name: str) -> np.ndarray | None:
        return self.weights.get(name)

    @property
    def layers(self) -> int:
        return self.config["num_hidden_layers"]

    @property
    def heads(self) -> tuple[int, int, int]:
        c = self.config
        n, kv = c["num_attention_heads"], c["num_key_value_heads"]
        return n, kv, c.get("head_dim") or c["hidden_size"] // n

    @property
    def rope_theta(self) -> float:
        c = self.config
        return float(c.get("rope_theta") or c["rope_parameters"]["rope_theta"])


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float, one_plus: bool) -> np.ndarray:
    scale = (1 + w) if one_plus else w
    return (x / np.sqrt((x * x).mean(-1, keepdims=True) + F32(eps))).astype(F32) * scale


def rope(x: np.ndarray, theta: float) -> np.ndarray:
    """HF rotate_half rope on ``[tokens, heads, head_dim]``."""
    t, _, d = x.shape
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    angles = np.arange(t, dtype=np.float64)[:, None] * inv
    angles = np.concatenate([angles, angles], -1)[:, None, :]
    cos, sin = np.cos(angles).astype(F32), np.sin(angles).astype(F32)
    half = d // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def silu(x: np.ndarray) -> np.ndarray:
    return x / (F32(1) + np.exp(-x))


def forward(model: NumpyModel, tokens: list[int], bug: str | None = None) -> dict[str, np.ndarray]:
    """Every capture point, canonical layout, float32, with ``bug`` planted in every layer."""
    if bug is not None and bug not in BUGS:
        raise ValueError(f"unknown bug {bug!r}")
    c, g = model.config, model.get
    n, kv, d = model.heads
    eps = c["rms_norm_eps"] * (100 if bug == "norm_eps" else 1)
    one_plus = bug == "norm_one_plus"
    theta = model.rope_theta * (10 if bug == "rope_theta" else 1)
    t = len(tokens)
    out: dict[str, np.ndarray] = {}
    x = g("model.embed_tokens.weight")[np.asarray(tokens)]
    out["embed"] = x
    for i in range(model.layers):
        p, w = f"layers.{i}.", f"model.layers.{i}."
        h = rms_norm(x, g(w + "input_layernorm.weight"), eps, one_plus)
        out[p + "attn_norm"] = h
        heads = {}
        for name, count in (("q", n), ("k", kv), ("v", kv)):
            y = h @ g(w + f"self_attn.{name}_proj.weight").T
            out[p + f"attn.{name}.pre_bias"] = y.reshape(t, count, d)
            bias = g(w + f"self_attn.{name}_proj.bias")
            if bias is not None:
                y = y + bias + (bias if bug == "bias_twice" else 0)
            out[p + f"attn.{name}.post_bias"] = y.reshape(t, count, d)
            heads[name] = y.reshape(t, count, d)
        q, k, v = rope(heads["q"], theta), rope(heads["k"], theta), heads["v"]
        out[p + "attn.q.rope"], out[p + "attn.k.rope"] = q, k
        # q head h reads kv head h // (n / kv); the planted bug reads h % kv
        kv_of = [(h_ % kv) if bug == "gqa_mapping" else h_ // (n // kv) for h_ in range(n)]
        scale = F32(1 / d) if bug == "attn_scale" else F32(1 / np.sqrt(d))
        kh = k.transpose(1, 0, 2)[kv_of]  # [n, t, d]
        scores = (q.transpose(1, 0, 2) @ kh.transpose(0, 2, 1)) * scale  # [n, tq, tk]
        out[p + "attn.scores"] = scores
        shift = 1 if bug == "causal_mask" else 0  # query i also sees key i + 1
        allowed = np.arange(t)[None, :] <= np.arange(t)[:, None] + shift
        masked = np.where(allowed, scores, -np.inf).astype(F32)
        e = np.exp(masked - masked.max(-1, keepdims=True))
        probs = e / e.sum(-1, keepdims=True)
        a = (probs @ v.transpose(1, 0, 2)[kv_of]).transpose(1, 0, 2)  # [t, n, d]
        out[p + "attn.out"] = a
        o = a.reshape(t, n * d) @ g(w + "self_attn.o_proj.weight").T
        out[p + "attn.o_proj"] = o
        x = x + o
        out[p + "resid.attn"] = x
        h = rms_norm(x, g(w + "post_attention_layernorm.weight"), eps, one_plus)
        out[p + "ffn_norm"] = h
        gate_w, up_w = g(w + "mlp.gate_proj.weight"), g(w + "mlp.up_proj.weight")
        if bug == "gate_up_swapped":
            gate_w, up_w = up_w, gate_w
        gate, up = h @ gate_w.T, h @ up_w.T
        out[p + "mlp.gate"], out[p + "mlp.up"] = gate, up
        s = silu(gate) * up
        out[p + "mlp.swiglu"] = s
        down = s @ g(w + "mlp.down_proj.weight").T
        out[p + "mlp.down"] = down
        x = x + down
        out[p + "resid.mlp"] = x
    x = rms_norm(x, g("model.norm.weight"), eps, one_plus)
    out["final_norm"] = x
    head = g("lm_head.weight")
    out["logits"] = x @ (g("model.embed_tokens.weight") if head is None else head).T
    assert all(v.dtype == F32 for v in out.values()), {k: v.dtype for k, v in out.items()}
    return out


# --- writing dumps ----------------------------------------------------------------------------


def write_points(
    path: Path,
    tokens: list[int],
    acts: dict[str, np.ndarray],
    keep: Iterable[str] | None = None,
    drop: Iterable[str] = (),
) -> Path:
    """A dump named by capture point (canonical layouts), of ``keep`` (default all) less
    any point containing one of ``drop``."""
    from aprlib.forward.dump import write_dump

    wanted = set(acts if keep is None else keep)
    chosen = {k: v for k, v in acts.items() if k in wanted and not any(part in k for part in drop)}
    return write_dump(path, tokens, chosen, engine="numpy-engine", engine_version="test")


#: llama.cpp-style engine names: (name, nth, point, layout the engine writes it in, scope).
#: A name may repeat (Qcur is the matmul, then the bias add, then the rope), told apart by nth.
ENGINE_MAP = (
    ("inp_embd", 1, "embed", "ne[hidden, tokens]", "all"),
    ("attn_norm-{layer}", 1, "layers.{layer}.attn_norm", "ne[hidden, tokens]", "all"),
    ("Qcur-{layer}", 1, "layers.{layer}.attn.q.pre_bias", "ne[heads*head_dim, tokens]", "all"),
    ("Qcur-{layer}", 2, "layers.{layer}.attn.q.post_bias", "ne[heads*head_dim, tokens]", "all"),
    ("Qcur-{layer}", 3, "layers.{layer}.attn.q.rope", "ne[head_dim, heads, tokens]", "all"),
    ("Kcur-{layer}", 1, "layers.{layer}.attn.k.post_bias", "[tokens, heads*head_dim]", "all"),
    ("Kcur-{layer}", 2, "layers.{layer}.attn.k.rope", "ne[head_dim, tokens, heads]", "all"),
    ("Vcur-{layer}", 1, "layers.{layer}.attn.v.post_bias", "[heads, head_dim, tokens]", "all"),
    ("kqv_out-{layer}", 1, "layers.{layer}.attn.out", "ne[heads*head_dim, tokens]", "all"),
    ("ffn_norm-{layer}", 1, "layers.{layer}.ffn_norm", "ne[hidden, tokens]", "all"),
    ("ffn_gate-{layer}", 1, "layers.{layer}.mlp.gate", "[intermediate, tokens]", "all"),
    ("ffn_up-{layer}", 1, "layers.{layer}.mlp.up", "ne[intermediate, tokens]", "all"),
    ("l_out-{layer}", 1, "layers.{layer}.resid.mlp", "ne[hidden, tokens]", "all"),
    ("result_norm", 1, "final_norm", "ne[hidden, tokens]", "last"),
    ("result_output", 1, "logits", "ne[vocab, tokens]", "last"),
)


def engine_map_yaml() -> str:
    lines = ["engine: numpy-engine", "points:"]
    for name, nth, point, layout, scope in ENGINE_MAP:
        lines += [f'  - name: "{name}"', f'    point: "{point}"', f'    layout: "{layout}"']
        lines += [f"    nth: {nth}"] if nth != 1 else []
        lines += [f"    scope: {scope}"] if scope != "all" else []
    return "\n".join(lines) + "\n"


def as_engine_layout(array: np.ndarray, point: str, layout: str, scope: str) -> np.ndarray:
    """A canonical tensor rearranged into ``layout`` (the inverse of reading it), written by
    hand for each layout ``ENGINE_MAP`` uses, so the test does not use the code it tests."""
    if scope == "last":
        array = array[-1:]
    t = array.shape[0]
    if layout in ("ne[hidden, tokens]", "ne[vocab, tokens]", "ne[intermediate, tokens]"):
        return array  # [tokens, x] in numpy order is ne[x, tokens]
    if layout in ("ne[heads*head_dim, tokens]", "[tokens, heads*head_dim]"):
        return array.reshape(t, -1)
    if layout == "ne[head_dim, heads, tokens]":
        return array  # [tokens, heads, head_dim]
    if layout == "ne[head_dim, tokens, heads]":
        return array.transpose(1, 0, 2)  # [heads, tokens, head_dim]
    if layout == "[heads, head_dim, tokens]":
        return array.transpose(1, 2, 0)
    if layout == "[intermediate, tokens]":
        return array.T
    raise AssertionError(f"no hand-written arrangement for {layout} at {point}")


def write_engine_names(
    path: Path, tokens: list[int], acts: dict[str, np.ndarray], layers: int
) -> tuple[Path, Path]:
    """A dump named as llama.cpp names its graph (``Qcur-0``, ``Qcur-0#2`` for the 2nd
    tensor of that name), in the engine's own layouts, and the ``--map`` YAML for it.
    Points the map has no name for are not in the dump (a partial dump)."""
    from aprlib.forward.dump import write_dump

    tensors = {}
    for name, nth, point, layout, scope in ENGINE_MAP:
        for i in range(layers) if "{layer}" in name else [None]:
            real = name.replace("{layer}", str(i)) if i is not None else name
            at = point.replace("{layer}", str(i)) if i is not None else point
            stored = real if nth == 1 else f"{real}#{nth}"
            tensors[stored] = as_engine_layout(acts[at], at, layout, scope)
    write_dump(path, tokens, tensors, engine="numpy-engine", engine_version="llama.cpp-names")
    map_path = path.with_suffix(".map.yaml")
    map_path.write_text(engine_map_yaml())
    return path, map_path
