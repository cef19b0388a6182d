"""Reading YAML: lines, duplicate keys, and every kind of hostile input gives one error."""

from __future__ import annotations

from pathlib import Path

import pytest

from provable.contracts.yamlsource import YamlSourceError, parse_yaml, read_yaml

BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def parse(text: str | bytes):
    raw = text.encode() if isinstance(text, str) else text
    return parse_yaml(raw, Path("x.yaml"))


def test_lines_of_keys_and_items():
    doc = parse("a:\n  b: 1\n  c:\n    - x\n    - y\n")
    assert doc.data == {"a": {"b": 1, "c": ["x", "y"]}}
    assert doc.line_of(("a", "b")) == 2
    assert doc.line_of(("a", "c", 1)) == 5
    assert doc.line_of(("a", "missing", 3)) == 1  # nearest ancestor with a line


def test_dates_stay_text_and_merge_keys_work():
    doc = parse("d: 2026-01-01\nbase: &b {x: 1}\nm: {<<: *b, y: 2}\n")
    assert doc.data["d"] == "2026-01-01"
    assert doc.data["m"] == {"x": 1, "y": 2}


def test_duplicate_key_is_reported_with_both_lines():
    doc = parse("metadata:\n  version: '1'\n  version: '2'\n")
    [problem] = doc.problems
    assert problem.rule == "duplicate-key" and problem.line == 3
    assert "first at line 2" in problem.message
    assert doc.data["metadata"]["version"] == "1"


@pytest.mark.parametrize(
    ("raw", "rule", "line", "words"),
    [
        ("a:\n\tb: 1\n", "yaml-syntax", 2, "tab"),
        (b"a: 1\nb: \xff\xfe\n", "encoding", 2, "UTF-8"),
        ("a: [1, 2\n", "yaml-syntax", 2, "YAML syntax"),
        ("a: 1\n---\nb: 2\n", "yaml-syntax", 2, "more than one"),
        ("", "top-level", 1, "empty"),
        (BOMB, "alias-bomb", None, "alias"),
        ("a: !!python/object:os.system 1\n", "yaml-tag", 1, "tag"),
        (b"a: 1\x00\n", "encoding", 1, "NUL"),
    ],
)
def test_hostile_input_gives_one_clear_error(raw, rule, line, words):
    with pytest.raises(YamlSourceError) as info:
        parse(raw)
    assert info.value.rule == rule
    assert words in info.value.message
    if line is not None:
        assert info.value.line == line


def test_alias_bomb_is_refused_within_a_node_budget_and_small_memory():
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(YamlSourceError) as info:
        parse(BOMB)  # 9^9 nodes if expanded; the budget stops it after ~10 x file size
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.rule == "alias-bomb"
    assert peak < 20 * 1024 * 1024


def test_oversized_file_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:
        fh.truncate(100 * 1024 * 1024)  # sparse: 100 MB on paper, nothing on disk
    with pytest.raises(YamlSourceError) as info:
        read_yaml(big)
    assert info.value.rule == "file-size" and "100" in info.value.message


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(YamlSourceError, match="directory"):
        read_yaml(tmp_path)
    with pytest.raises(YamlSourceError, match="no such file"):
        read_yaml(tmp_path / "nope.yaml")
