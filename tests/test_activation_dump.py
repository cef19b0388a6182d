"""The activation-dump format (docs/activation-dump.md): the doc's own writers, compiled and
run, produce files ``read_dump`` and ``apr bisect`` take; layouts are read as declared;
hostile files are one-line errors, never a traceback."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aprlib.cli.main import main
from aprlib.config.modelconfig import ModelConfig
from aprlib.forward.dump import (
    DumpError,
    Layout,
    PointMap,
    canonical_dims,
    read_dump,
    to_canonical,
    write_dump,
)
from aprlib.forward.model import capture_graph
from falsifiers import numpy_engine as ne

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOC = Path(__file__).resolve().parents[1] / "docs" / "activation-dump.md"
TOKENS = [5, 17, 3, 88, 42, 7]


def code_blocks(language: str) -> list[str]:
    """The doc's fenced blocks in ``language``, in order, as the tests run them."""
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return ne.write_tiny(tmp_path_factory.mktemp("qwen2"), "qwen2")


@pytest.fixture(scope="module")
def config(tiny) -> ModelConfig:
    from aprlib.forward.model import Transformer

    return Transformer.from_file(tiny).config


@pytest.fixture(scope="module")
def acts(tiny) -> dict[str, np.ndarray]:
    return ne.forward(ne.NumpyModel.load(tiny), TOKENS)


def apr(capsys, *args: str) -> tuple[int, str, list[str]]:
    """``apr ARGS`` in process: exit code, stdout, stderr lines."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err.splitlines()


def bisect_json(capsys, *args: str) -> tuple[int, dict]:
    rc, out, err = apr(capsys, "bisect", *args, "--json")
    assert rc in (0, 1) and not err, err
    return rc, json.loads(out)


# --- the doc's writers ------------------------------------------------------------------------


def test_the_doc_writers_are_short_and_complete():
    c_writer, c_main = code_blocks("c")
    (py_writer,) = code_blocks("python")[-1:]
    for block in (c_writer, py_writer):
        assert len(block.splitlines()) < 40, block
    assert "int main" in c_main and "apr_dump_write(" in c_main
    assert "def write_dump" in py_writer


@pytest.fixture(scope="module")
def c_writer(tmp_path_factory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler (cc, gcc, clang) on PATH to compile the doc's C writer")
    folder = tmp_path_factory.mktemp("c-writer")
    source = folder / "apr_dump.c"
    source.write_text("\n".join(code_blocks("c")))
    binary = folder / "apr_dump"
    build = subprocess.run(
        [compiler, "-std=c99", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(source)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    return binary


def test_the_c_writer_writes_a_dump_read_as_written(c_writer, tiny, config, acts, tmp_path, capsys):
    embed = acts["embed"]
    k_rope = acts["layers.0.attn.k.rope"].transpose(1, 0, 2)  # the engine keeps [heads, tokens, d]
    args = [str(tmp_path / "c.safetensors"), json.dumps(TOKENS), "c-engine"]
    for name, layout, array in (
        ("embed", "", embed),
        ("layers.0.attn.k.rope", "ne[head_dim, tokens, heads]", k_rope),
    ):
        raw = tmp_path / f"{name}.f32"
        array.astype("<f4").tofile(raw)
        args += [name, layout, "x".join(map(str, array.shape)), str(raw)]
    run = subprocess.run([str(c_writer), *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr

    dump = read_dump(args[0], config)
    assert dump.tokens == TOKENS and dump.engine == "c-engine"
    assert np.array_equal(dump.points["embed"].numpy(), embed)
    assert np.array_equal(dump.points["layers.0.attn.k.rope"].numpy(), acts["layers.0.attn.k.rope"])
    assert set(dump.absent) == set(capture_graph(2)) - {"embed", "layers.0.attn.k.rope"}

    rc, out, err = apr(capsys, "bisect", tiny, args[0])
    assert rc == 0 and not err, err
    assert "39 points not held" in out and "BISECT: CLEAN" in out


def test_the_c_writer_with_no_tensors_gives_a_dump_that_says_so(c_writer, config, tmp_path):
    path = tmp_path / "empty.safetensors"
    subprocess.run([str(c_writer), str(path), "[1,2]", "c-engine"], check=True)
    with pytest.raises(DumpError, match="holds no tensors"):
        read_dump(path, config)


def test_the_numpy_writer_writes_a_dump_read_as_written(tiny, config, acts, tmp_path, capsys):
    namespace: dict = {}
    exec(code_blocks("python")[-1], namespace)
    path = tmp_path / "np.safetensors"
    tensors = {
        "layers.0.attn_norm": acts["layers.0.attn_norm"],
        "Qcur-0#3": acts["layers.0.attn.q.rope"],
        "layers.1.mlp.up": acts["layers.1.mlp.up"].T,
        "logits": acts["logits"][-1:].astype(np.float64),  # written as F32
    }
    layouts = {
        "Qcur-0#3": "ne[head_dim, heads, tokens]",
        "layers.1.mlp.up": "ne[tokens, intermediate]",
    }
    namespace["write_dump"](path, TOKENS, tensors, "np-engine", layouts, {"logits": "last"})
    point_map = PointMap.from_dict(
        {"points": [{"name": "Qcur-{layer}", "nth": 3, "point": "layers.{layer}.attn.q.rope"}]}
    )

    dump = read_dump(path, config, point_map)
    assert dump.tokens == TOKENS and dump.engine == "np-engine"
    assert dump.scopes["logits"] == "last" and dump.scopes["layers.0.attn_norm"] == "all"
    for point, want in (
        ("layers.0.attn_norm", acts["layers.0.attn_norm"]),
        ("layers.0.attn.q.rope", acts["layers.0.attn.q.rope"]),
        ("layers.1.mlp.up", acts["layers.1.mlp.up"]),
        ("logits", acts["logits"][-1:]),
    ):
        assert np.array_equal(dump.points[point].numpy(), want), point
    assert len(dump.absent) == len(capture_graph(2)) - 4

    map_path = tmp_path / "map.yaml"
    map_path.write_text(
        'points:\n  - name: "Qcur-{layer}"\n    nth: 3\n    point: "layers.{layer}.attn.q.rope"\n'
        '    layout: "ne[head_dim, heads, tokens]"\n'
    )
    rc, report = bisect_json(capsys, tiny, path, "--map", map_path)
    assert rc == 0 and report["verdict"] == "CLEAN"
    (check,) = [c for c in report["checks"] if c["kind"] == "engine"]
    assert check["side"] == "B" and len(check["absent"]) == len(capture_graph(2)) - 4
    (logits,) = [p for p in check["points"] if p["name"] == "logits"]
    assert logits["scope"] == "last" and logits["shape"] == [1, 1, 96]


def test_the_numpy_writer_matches_the_safetensors_package(acts, tmp_path):
    """The hand-written file is what safetensors itself reads (and the header as written)."""
    from safetensors import safe_open

    namespace: dict = {}
    exec(code_blocks("python")[-1], namespace)
    path = tmp_path / "np.safetensors"
    namespace["write_dump"](path, TOKENS, {"embed": acts["embed"]}, "e")
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {
            "apr.dump": "1",
            "apr.tokens": json.dumps(TOKENS),
            "apr.engine": "e",
        }
        assert np.array_equal(f.get_tensor("embed"), acts["embed"])
    assert int.from_bytes(path.read_bytes()[:8], "little") % 8 == 0


# --- layouts ----------------------------------------------------------------------------------

SIZES = {"batch": 1, "tokens": 3, "hidden": 8, "heads": 2, "head_dim": 5}
SIZES.update(intermediate=7, vocab=11)


def test_ggml_order_is_numpy_order_reversed_products_outer_first():
    assert Layout.parse("ne[head_dim, heads, tokens]", "x").dims == (
        ("tokens",),
        ("heads",),
        ("head_dim",),
    )
    assert Layout.parse("ne[heads*head_dim, tokens]", "x").dims == (
        ("tokens",),
        ("heads", "head_dim"),
    )
    assert Layout.parse("ne[hidden, tokens, batch]", "x").dims == (
        ("batch",),
        ("tokens",),
        ("hidden",),
    )


def test_transposes_products_and_a_leading_batch_come_back_canonical():
    rng = np.random.default_rng(0)
    canon = rng.standard_normal((3, 2, 5)).astype(np.float32)  # [tokens, heads, head_dim]
    point = "layers.0.attn.out"
    cases = {
        "[tokens, heads, head_dim]": canon,
        "[tokens, heads*head_dim]": canon.reshape(3, 10),
        "ne[heads*head_dim, tokens]": canon.reshape(3, 10),
        "ne[head_dim*heads, tokens]": canon.transpose(0, 2, 1).reshape(3, 10),
        "[heads, tokens, head_dim]": canon.transpose(1, 0, 2),
        "ne[head_dim, tokens, heads]": canon.transpose(1, 0, 2),
        "[head_dim, heads, tokens]": canon.transpose(2, 1, 0),
        "[tokens, head_dim*heads]": canon.transpose(0, 2, 1).reshape(3, 10),
        "[batch, tokens, heads*head_dim]": canon.reshape(1, 3, 10),
        "ne[head_dim, heads, tokens, batch]": canon[None],
    }
    for text, array in cases.items():
        got = to_canonical(array, Layout.parse(text, "t"), point, SIZES, "t")
        assert np.array_equal(got, canon), text
    assert np.array_equal(to_canonical(canon.reshape(3, 10), None, point, SIZES, "t"), canon)


def test_scores_read_queries_first_in_declared_order():
    rng = np.random.default_rng(1)
    canon = rng.standard_normal((2, 3, 3)).astype(np.float32)  # [heads, queries, keys]
    point = "layers.0.attn.scores"
    stored = canon.transpose(1, 2, 0)  # [queries, keys, heads]
    for text in ("[tokens, tokens, heads]", "ne[heads, tokens, tokens]"):
        got = to_canonical(stored, Layout.parse(text, "t"), point, SIZES, "t")
        assert np.array_equal(got, canon), text
    ggml_kq = to_canonical(canon, Layout.parse("ne[tokens, tokens, heads]", "t"), point, SIZES, "t")
    assert np.array_equal(ggml_kq, canon)


@pytest.mark.parametrize(
    ("layout", "shape", "words"),
    [
        ("[tokens, heads, head_dim]", (3, 5, 2), "contradicts its declared layout"),
        ("ne[hidden, tokens]", (3, 10), "contradicts its declared layout"),
        ("[tokens, heads]", (3, 2), "has dimensions"),
        ("[tokens, heads, head_dim, vocab]", (3, 2, 5, 11), "has dimensions"),
        ("[tokens, heads, tokens]", (3, 2, 3), "has dimensions"),
    ],
)
def test_a_shape_or_layout_that_contradicts_the_point_names_the_entry(layout, shape, words):
    with pytest.raises(ValueError, match=words) as info:
        to_canonical(
            np.zeros(shape, np.float32),
            Layout.parse(layout, "e"),
            "layers.0.attn.out",
            SIZES,
            "Kcur-0#2",
        )
    assert "Kcur-0#2" in str(info.value)


def test_a_contradicting_shape_in_a_dump_is_a_dump_error_naming_the_tensor(config, acts, tmp_path):
    path = tmp_path / "bad.safetensors"
    q_rope = acts["layers.0.attn.q.rope"]
    write_dump(
        path,
        TOKENS,
        {"embed": acts["embed"], "Qcur-0": q_rope.transpose(1, 0, 2)},  # [heads, tokens, d]
        layouts={"Qcur-0": "ne[head_dim, heads, tokens]"},  # says [tokens, heads, d]
    )
    point_map = PointMap.from_dict(
        {"points": [{"name": "Qcur-0", "point": "layers.0.attn.q.rope"}]}
    )
    with pytest.raises(DumpError, match=r"Qcur-0.*contradicts its declared layout") as info:
        read_dump(path, config, point_map)
    assert info.value.tensor is not None and "Qcur-0" in info.value.tensor


@settings(max_examples=150, deadline=None)
@given(
    point=st.sampled_from(
        [
            "embed",
            "layers.0.attn.q.pre_bias",
            "layers.0.attn.k.rope",
            "layers.0.attn.out",
            "layers.1.mlp.gate",
            "logits",
            "layers.0.attn.scores",
        ]
    ),
    data=st.data(),
)
def test_any_declared_permutation_and_merge_of_a_points_dims_round_trips(point, data):
    canon_names = list(canonical_dims(point))
    canon = np.arange(int(np.prod([SIZES[n] for n in canon_names])), dtype=np.float32)
    canon = canon.reshape([SIZES[n] for n in canon_names])
    axes = list(range(len(canon_names)))
    order = data.draw(st.permutations(axes))
    if point.endswith("attn.scores") and order.index(1) > order.index(2):
        order[order.index(1)], order[order.index(2)] = 2, 1  # queries before keys: expressible
    stored = canon.transpose(order)
    names = [canon_names[i] for i in order]
    # merge neighbouring dims (a product), at random cut points, and maybe a leading batch
    cuts = sorted(data.draw(st.sets(st.integers(1, len(names) - 1))) if len(names) > 1 else [])
    groups = [names[a:b] for a, b in zip([0, *cuts], [*cuts, len(names)], strict=True)]
    if data.draw(st.booleans()):
        groups.insert(0, ["batch"])
    stored = stored.reshape([int(np.prod([SIZES[n] for n in g])) for g in groups])
    if data.draw(st.booleans()):
        text = "ne[" + ", ".join("*".join(g) for g in reversed(groups)) + "]"
    else:
        text = "[" + ", ".join("*".join(g) for g in groups) + "]"
    got = to_canonical(stored, Layout.parse(text, "t"), point, SIZES, "t")
    assert np.array_equal(got, canon), text


# --- hostile dumps: one line on stderr, exit 1 ------------------------------------------------


def _header_file(path: Path, header: dict, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def _raw(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _good(path: Path, acts, **meta) -> Path:
    array = np.ascontiguousarray(acts["embed"], "<f4")
    header = {
        "__metadata__": {"apr.dump": "1", "apr.tokens": json.dumps(TOKENS), **meta},
        "embed": {"dtype": "F32", "shape": list(array.shape), "data_offsets": [0, array.nbytes]},
    }
    return _header_file(path, header, array.tobytes())


HOSTILE = {
    "not safetensors": lambda p, a: _raw(p, b"\x00garbage" * 20),
    "empty file": lambda p, a: _raw(p, b""),
    "wrong apr.dump": lambda p, a: _good(p, a, **{"apr.dump": "2"}),
    "no tokens": lambda p, a: _header_file(p, {"__metadata__": {"apr.dump": "1"}}),
    "tokens not a list": lambda p, a: _good(p, a, **{"apr.tokens": "{1,2}"}),
    "tokens empty": lambda p, a: _good(p, a, **{"apr.tokens": "[]"}),
    "token out of vocab": lambda p, a: _good(p, a, **{"apr.tokens": "[1, 96]"}),
    "negative token": lambda p, a: _good(p, a, **{"apr.tokens": "[-1]"}),
    "float token": lambda p, a: _good(p, a, **{"apr.tokens": "[1.0]"}),
    "metadata not strings": lambda p, a: _header_file(
        p, {"__metadata__": {"apr.dump": "1", "apr.tokens": [1, 2]}}
    ),
    "bad scope": lambda p, a: _good(p, a, **{"apr.scope.embed": "first"}),
    "bad layout": lambda p, a: _good(p, a, **{"apr.layout.embed": "[tokens, width]"}),
    "unparsable layout": lambda p, a: _good(p, a, **{"apr.layout.embed": "tokens, hidden"}),
    "layout contradicts shape": lambda p, a: _good(
        p, a, **{"apr.layout.embed": "[hidden, tokens]"}
    ),
    "int tensor": lambda p, a: _header_file(
        p,
        {
            "__metadata__": {"apr.dump": "1", "apr.tokens": "[1, 2]"},
            "embed": {"dtype": "I32", "shape": [2, 64], "data_offsets": [0, 512]},
        },
        bytes(512),
    ),
    "truncated data": lambda p, a: _raw(p, _good(p, a).read_bytes()[:-100]),
    "offsets past the end": lambda p, a: _header_file(
        p,
        {
            "__metadata__": {"apr.dump": "1", "apr.tokens": "[1, 2]"},
            "embed": {"dtype": "F32", "shape": [2, 64], "data_offsets": [0, 512]},
        },
        bytes(16),
    ),
    "header length past the end": lambda p, a: _raw(
        p, (1 << 20).to_bytes(8, "little") + b'{"__metadata__":{"apr.dump":"1"}}'
    ),
    "no capture point": lambda p, a: write_dump(p, TOKENS, {"attn_nrom-0": a["embed"]}),
    "a point of another size": lambda p, a: write_dump(p, TOKENS, {"embed": a["embed"][:, :32]}),
}


NOT_DUMPS = ("not safetensors", "empty file")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_dump_is_one_line_and_exit_1(case, tiny, config, acts, tmp_path, capsys):
    path = HOSTILE[case](tmp_path / "hostile.safetensors", acts)
    dump = case not in NOT_DUMPS
    # a file whose header does not say apr.dump is read as a second model file: give tokens
    rc, out, err = apr(capsys, "bisect", tiny, path, *([] if dump else ["--tokens", "1,2,3"]))
    assert rc == 1, (out, err)
    assert len(err) == 1 and err[0].startswith("apr: error: "), err
    assert "Traceback" not in out
    with pytest.raises(DumpError):
        read_dump(path, config)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("points: [", "cannot read the map"),
        ("- a\n- b\n", "'points' list"),
        ("points:\n  - name: x\n", "'name' and 'point' must be strings"),
        ('points:\n  - {name: "Q-{layer}", point: "layers.0.attn_norm"}\n', "{layer}"),
        ("points:\n  - {name: Q, point: embed, nth: 0}\n", "nth"),
        ("points:\n  - {name: Q, point: embed, scope: some}\n", "scope"),
        ("points:\n  - {name: Q, point: embed, layout: '[tokens, depth]'}\n", "unknown dimension"),
        ("points:\n  - {name: Q, point: layers.7.attn_norm}\n", "not a capture point"),
    ],
)
def test_a_hostile_map_is_one_line_and_exit_1(text, words, tiny, acts, tmp_path, capsys):
    dump = write_dump(
        tmp_path / "d.safetensors", TOKENS, {"embed": acts["embed"], "Q": acts["embed"]}
    )
    map_path = tmp_path / "map.yaml"
    map_path.write_text(text)
    rc, out, err = apr(capsys, "bisect", tiny, dump, "--map", map_path)
    assert rc == 1, (out, err)
    assert len(err) == 1 and err[0].startswith("apr: error: ") and words in err[0], err


def test_tokens_given_on_the_command_line_must_be_the_dumps(tiny, acts, tmp_path, capsys):
    dump = write_dump(tmp_path / "d.safetensors", TOKENS, {"embed": acts["embed"]})
    rc, _, err = apr(capsys, "bisect", tiny, dump, "--tokens", "1,2,3,4,5,6")
    assert rc != 0 and len(err) == 1 and "tokens" in err[0], err
    rc, _, err = apr(capsys, "bisect", tiny, dump, "--tokens", ",".join(map(str, TOKENS)))
    assert rc == 0, err


def test_half_and_double_dtypes_are_read(config, acts, tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "d.safetensors"
    embed = torch.from_numpy(acts["embed"])
    tensors = {
        "embed": embed.to(torch.bfloat16),
        "layers.0.attn_norm": torch.from_numpy(acts["layers.0.attn_norm"]).half(),
        "final_norm": torch.from_numpy(acts["final_norm"]).double(),
    }
    save_file(tensors, str(path), metadata={"apr.dump": "1", "apr.tokens": json.dumps(TOKENS)})
    dump = read_dump(path, config)
    assert torch.equal(dump.points["embed"], embed.to(torch.bfloat16).float())
    assert dump.points["final_norm"].dtype == torch.float64


def test_apply_map_places_an_engines_raw_captures_by_name_and_order(config, acts):
    """What a callback inside an engine collects: several tensors per name, in evaluation
    order (llama.cpp's Qcur-0 is the matmul, the bias add, then the rope)."""
    from aprlib.forward.dump import apply_map

    point_map = PointMap.from_dict(
        {
            "points": [
                {"name": n, "nth": k, "point": p, "layout": lay, "scope": sc}
                for n, k, p, lay, sc in ne.ENGINE_MAP
            ]
        }
    )
    raw: dict[str, list[np.ndarray]] = {"norm-0": [acts["layers.0.attn_norm"]]}
    for name, _, point, layout, scope in ne.ENGINE_MAP:  # ENGINE_MAP lists each name's nth in order
        for i in range(2) if "{layer}" in name else [None]:
            real = name if i is None else name.replace("{layer}", str(i))
            at = point if i is None else point.replace("{layer}", str(i))
            raw.setdefault(real, []).append(ne.as_engine_layout(acts[at], at, layout, scope))
    points, scopes, absent, ignored = apply_map(raw, point_map, config, len(TOKENS))
    assert ignored == ["norm-0"]
    assert len(points) == 1 + 12 * 2 + 2 and len(absent) == len(capture_graph(2)) - len(points)
    assert scopes["logits"] == "last" and scopes["layers.1.attn.q.rope"] == "all"
    for point, got in points.items():
        want = acts[point][-1:] if scopes[point] == "last" else acts[point]
        assert np.array_equal(got.numpy(), want), point
    with pytest.raises(DumpError, match="no tensor is at a capture point"):
        apply_map({"norm-0": [acts["embed"]]}, point_map, config, len(TOKENS))


def test_the_files_own_layout_and_scope_win_over_the_maps(config, acts, tmp_path):
    path = write_dump(
        tmp_path / "d.safetensors",
        TOKENS,
        {"result_output": acts["logits"][-1:].T},  # [vocab, 1]: the last token only
        layouts={"result_output": "[vocab, tokens]"},
        scopes={"result_output": "last"},
    )
    point_map = PointMap.from_dict(
        {"points": [{"name": "result_output", "point": "logits", "layout": "ne[vocab, tokens]"}]}
    )
    dump = read_dump(path, config, point_map)
    assert dump.scopes == {"logits": "last"}
    assert np.array_equal(dump.points["logits"].numpy(), acts["logits"][-1:])
