"""Round-trip rewrites: edge cases of layout that a status edit must not disturb."""

from __future__ import annotations

import pytest
import yaml

from provable.contracts.rewrite import append_changelog, quoted_like, rewrite_text, set_key


def edit(text, fn):
    return rewrite_text(text, fn)


def test_unchanged_document_is_returned_byte_for_byte():
    text = "a: 1   # c\n\n# block\nb: [1, 2]\nc: ~\n"
    assert edit(text, lambda d: None) == text


def test_tilde_nulls_elsewhere_survive_an_edit():
    text = "metadata:\n  version: '1.0.0'\nother: ~\n"
    out = edit(text, lambda d: set_key(d["metadata"], "status", "PROPOSED"))
    assert out == "metadata:\n  version: '1.0.0'\n  status: PROPOSED\nother: ~\n"


def test_missing_final_newline():
    out = edit("a:\n  b: [x, y]", lambda d: set_key(d["a"], "c", 1))
    assert out == "a:\n  b: [x, y]\n  c: 1\n"


def test_new_key_keeps_inline_comment_and_blank_line_in_place():
    text = "items:\n  - id: A\n    p: x   # note\n\n  - id: B\n"
    out = edit(text, lambda d: set_key(d["items"][0], "status", "P"))
    assert out == "items:\n  - id: A\n    p: x   # note\n    status: P\n\n  - id: B\n"


def test_new_key_goes_before_a_trailing_block_scalar():
    text = "f:\n  id: A\n  test: |\n    line one\n\n# next section\ng: 1\n"
    out = edit(text, lambda d: set_key(d["f"], "status", "P"))
    assert out == "f:\n  id: A\n  status: P\n  test: |\n    line one\n\n# next section\ng: 1\n"
    assert yaml.safe_load(out)["f"]["test"] == "line one\n"


@pytest.mark.parametrize(
    ("log", "entry_line"),
    [
        (
            '  - {version: "1.0.0", date: "d", change: "c"}\n',
            '  - {version: "1.1.0", date: "e", change: "x"}\n',
        ),
        (
            '  - version: "1.0.0"\n    date: "d"\n    change: "c"\n',
            '  - version: "1.1.0"\n    date: "e"\n    change: "x"\n',
        ),
    ],
    ids=["flow", "block"],
)
def test_changelog_entry_follows_the_existing_style(log, entry_line):
    text = f"changelog:\n{log}"
    out = edit(
        text, lambda d: append_changelog(d, {"version": "1.1.0", "date": "e", "change": "x"})
    )
    assert out == text + entry_line


def test_version_keeps_its_quotes():
    for old, new in (("'1.0.0'", "'1.1.0'"), ('"1.0.0"', '"1.1.0"'), ("1.0.0", "1.1.0")):
        out = edit(
            f"m:\n  version: {old}\n",
            lambda d: set_key(d["m"], "version", quoted_like(d["m"]["version"], "1.1.0")),
        )
        assert out == f"m:\n  version: {new}\n"


def test_four_space_indentation_is_kept():
    text = "m:\n    version: '1'\nt:\n    -   id: A\n        rule: r\n"
    out = edit(text, lambda d: set_key(d["t"][0], "status", "P"))
    assert out == text + "        status: P\n"
