"""Token ids as a user types them and as a model can take them.

Its own module because three callers need it below ``logits``: trace, the CLI and the
llama.cpp child (which ``logits`` itself starts, so the check there would be a cycle).
"""

from __future__ import annotations

from pathlib import Path

from aprlib.errors import ModelFileError


def parse_tokens(text: str) -> list[int]:
    """``"1,2,3"`` → ``[1, 2, 3]`` (a typed error names the bad item)."""
    out = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        if not item.lstrip("-").isdigit() or int(item) < 0:
            raise ValueError(f"--tokens: {item!r} is not a token id (non-negative integer)")
        out.append(int(item))
    if not out:
        raise ValueError("--tokens: no token ids given")
    return out


def check_token_ids(tokens: list[int], vocab: int, where: Path | str) -> None:
    """A typed error naming the first id the model's embedding has no row for (the
    embedding itself would end in an IndexError traceback)."""
    bad = [t for t in tokens if t >= vocab]
    if bad:
        raise ModelFileError(where, f"token id {bad[0]} >= vocab_size {vocab}", field="tokens")
