"""Markdown for values that came from a file: ``md_escape`` is the one function that makes
any string safe to put inside a line of ``status.md``, after text of the caller's own (a
table cell, a heading; at the very start of a line a value could still open a block).

Contracts, evidence and history are untrusted input, and CI publishes ``status.md`` as the
job summary (GitHub Markdown, which also renders inline HTML). The escaped text renders as
the input's own characters and can add nothing: no line (every control, line or paragraph
separator becomes a space), no table column (``|``), no tag or entity (``<``, ``>`` and
``&`` as entities), no link, image, emphasis, strike-through, math, code span or heading
mark (the ASCII punctuation that starts one is backslash-escaped) and no autolink (``<``
is gone, and the ``:`` of ``://``, the ``.`` of ``www.`` and every ``@`` are escaped).
Nothing is dropped: the reader sees what the file says, never what it would make of it.
"""

from __future__ import annotations

import re

#: what each special character becomes; every other printable character stays as it is
_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    **{c: "\\" + c for c in "\\`*_[]|!~$@#"},
}
#: what GitHub would turn into a link without any markup: ``http://``, ``www.``
_AUTOLINK = re.compile(r"(?<=[Ww][Ww][Ww])\.|:(?=//)")


def md_escape(text: str) -> str:
    """``text`` as Markdown that renders exactly ``text`` (control characters as spaces)."""
    out = "".join(_ESCAPES.get(c, c) if c.isprintable() else " " for c in text)
    return _AUTOLINK.sub(lambda m: "\\" + m.group(0), out)


def md_code(text: str) -> str:
    """``text`` as inline code when it needs no escaping (an id), else as escaped text.

    A code span shows backslashes as they are, so only a value that ``md_escape`` leaves
    unchanged (no backtick, no ``|``, no line break) may go inside one."""
    escaped = md_escape(text)
    return f"`{text}`" if text and escaped == text and text.strip() == text else escaped
