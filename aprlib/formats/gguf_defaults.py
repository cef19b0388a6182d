"""Keys llama.cpp's own converter leaves out, filled in the way llama.cpp itself does.

``convert_hf_to_gguf.py`` writes no ``{arch}.vocab_size``: llama.cpp takes the vocabulary
size from the length of ``tokenizer.ggml.tokens`` (and the embedding has that many rows).
A key with a documented default in llama.cpp's loader gets that default here, so a file
llama.cpp opens is a file aprlib opens; which keys were filled is kept, for ``inspect``.
"""

from __future__ import annotations

from typing import Any

#: llama.cpp's defaults for keys its loader treats as optional (llama_hparams)
DEFAULTS = {
    "rope.freq_base": 10000.0,
}


def with_llama_cpp_defaults(
    kv: dict[str, Any], tokenizer: dict[str, Any], embedding_rows: int | None
) -> tuple[dict[str, Any], list[str]]:
    """(kv with the omitted keys filled, the keys that were filled)."""
    arch = kv.get("general.architecture")
    if not isinstance(arch, str):
        return kv, []
    out, filled = dict(kv), []
    vocab_key = f"{arch}.vocab_size"
    if vocab_key not in out:
        tokens = tokenizer.get("tokenizer.ggml.tokens")
        if isinstance(tokens, list) and tokens:
            out[vocab_key] = len(tokens)
        elif embedding_rows:
            out[vocab_key] = embedding_rows
        if vocab_key in out:
            filled.append(vocab_key)
    for suffix, value in DEFAULTS.items():
        key = f"{arch}.{suffix}"
        if key not in out:
            out[key] = value
            filled.append(key)
    return out, filled
