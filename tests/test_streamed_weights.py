"""Streamed weights (issue 26): a forward that reads each layer from the file when it runs.

Held to: the held forward's bits for every architecture, stored dtype and compute dtype;
the trace's points and bisect's verdicts unchanged; a file that shrinks or is rewritten
mid-stream is ``FileChangedError``; a model that cannot fit is refused naming its layer;
the memory bound holds under ``ulimit -v``; the commands say what they hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from aprlib import (
    DType,
    FileChangedError,
    ModelMemoryError,
    Transformer,
    choose_streaming,
    memory_plan,
    open_model,
    write_model,
)
from aprlib.forward import weights
from aprlib.forward.model import as_reference64

TOKENS = [[3, 7, 3, 50, 11, 1, 0, 63]]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_head_blocks(monkeypatch):
    """The head in several row blocks on a tiny vocabulary (held and streamed alike)."""
    monkeypatch.setattr(weights, "HEAD_BLOCK_BYTES", 20 * 64 * 4)


def model_file(tiny, tmp_path: Path, fmt: str) -> Path:
    """The tiny model as a user may hold it: HF folder, GGUF (as stored or Q8_0), APR."""
    if fmt == "folder":
        return tiny.folder
    suffix, dtype = {
        "gguf": (".gguf", None),
        "gguf-q8_0": (".gguf", DType.Q8_0),
        "apr": (".apr", None),
    }[fmt]
    out = tmp_path / f"model-{fmt}{suffix}"
    with open_model(tiny.folder) as model:
        write_model(model, out, dtype=dtype, checked=True)
    return out


def logits(path: Path, dtype: torch.dtype, stream: bool) -> torch.Tensor:
    net = Transformer.from_file(path, dtype=dtype, stream=stream)
    with torch.no_grad():
        return net(torch.tensor(TOKENS))


@pytest.mark.parametrize(
    "arch,tied,stored",
    [
        ("qwen2", False, "float32"),
        ("qwen2", True, "bfloat16"),
        ("llama", False, "float16"),
        ("llama", True, "float32"),
    ],
)
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16, torch.float64])
def test_streamed_logits_are_the_held_bits(
    tiny_factory, arch, tied, stored, compute, small_head_blocks, one_torch_thread
):
    path = tiny_factory(arch, tied=tied, dtype=stored).folder
    held, streamed = logits(path, compute, False), logits(path, compute, True)
    assert streamed.dtype == held.dtype == compute
    assert torch.equal(streamed, held)


@pytest.mark.parametrize("fmt", ["gguf", "gguf-q8_0", "apr"])
def test_streamed_logits_are_the_held_bits_in_every_format(
    tiny_qwen2, tmp_path, fmt, small_head_blocks, one_torch_thread
):
    path = model_file(tiny_qwen2, tmp_path, fmt)
    assert torch.equal(logits(path, torch.float32, True), logits(path, torch.float32, False))


def test_float64_reference_and_every_point_agree(tiny_llama, small_head_blocks, one_torch_thread):
    """bisect's float64 reference shares the streamed layer with the float32 run; every
    capture point of a streamed forward is the held one's."""
    held = Transformer.from_file(tiny_llama.folder)
    streamed = Transformer.from_file(tiny_llama.folder, stream=True)
    tokens = torch.tensor(TOKENS)
    with torch.no_grad():
        assert torch.equal(as_reference64(streamed)(tokens), as_reference64(held)(tokens))
        points = [dict(net.points(tokens)) for net in (held, streamed)]
    assert points[0].keys() == points[1].keys()
    assert all(torch.equal(points[0][k], points[1][k]) for k in points[0])


def test_forwards_out_of_lockstep_are_refused(tiny_qwen2, one_torch_thread):
    """Two forwards on one streamed source must not overwrite each other's layer."""
    net = Transformer.from_file(tiny_qwen2.folder, stream=True)
    twin = as_reference64(net)
    tokens = torch.tensor(TOKENS)
    first, second = net.points(tokens), twin.points(tokens)
    with torch.no_grad():
        next(first), next(first)  # embed, layers.0.attn_norm: layer 0 is held
        for _ in range(30):  # the twin runs ahead into layer 1
            next(second)
        with pytest.raises(RuntimeError, match="lockstep"):
            for _ in range(40):
                next(first)


def test_bisect_streamed_names_what_held_names(tiny_factory, tmp_path, one_torch_thread):
    from safetensors.torch import load_file, save_file

    tiny = tiny_factory("qwen2", tied=False, dtype="bfloat16")
    other = tmp_path / "b"
    other.mkdir()
    state = load_file(tiny.safetensors)
    bias = "model.layers.1.self_attn.k_proj.bias"
    state[bias] = state[bias] * 10
    save_file(state, other / "model.safetensors", metadata={"format": "pt"})
    (other / "config.json").write_text((tiny.folder / "config.json").read_text())
    reports = []
    for flag in ("--stream-weights", "--no-stream-weights"):
        run = apr("bisect", str(tiny.folder), str(other), "--tokens", "1,2,3,60,5", flag, "--json")
        assert run.returncode == 1, run.stderr
        data = json.loads(run.stdout)
        assert data["streamed"] is (flag == "--stream-weights")
        assert data["peak_rss_bytes"] > 0
        checks = [(c["kind"], c["introduced"]) for c in data["checks"]]
        reports.append((checks, data["weights_differ"]))
    assert reports[0] == reports[1]
    assert reports[0][1] == [bias]  # streamed: by the CRC32 of the bytes as they passed
    assert reports[0][0][0][1][0] == "layers.1.attn.k.post_bias"


def apr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aprlib.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_commands_say_what_they_hold(tiny_qwen2, tmp_path):
    run = apr("logits", str(tiny_qwen2.folder), "--tokens", "1,2,3", "--stream-weights", "--json")
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("apr: streaming 2 layers; peak ≈ "), run.stderr
    data = json.loads(run.stdout)
    assert data["streamed"] is True and data["peak_rss_bytes"] > 10 << 20
    held = apr("logits", str(tiny_qwen2.folder), "--tokens", "1,2,3", "--json")
    assert "streaming" not in held.stderr and json.loads(held.stdout)["streamed"] is False
    trace = tmp_path / "t.json"
    run = apr(
        "trace", str(tiny_qwen2.folder), "--tokens", "1,2", "--stream-weights", "--json", str(trace)
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(trace.read_text())["peak_rss_bytes"] > 0


def test_transformers_is_refused_when_the_model_must_stream(tiny_qwen2):
    run = apr(
        "logits",
        str(tiny_qwen2.folder),
        "--tokens",
        "1,2",
        "--backend",
        "transformers",
        "--stream-weights",
    )
    assert run.returncode != 0
    assert "transformers holds every weight" in run.stderr
    assert "Traceback" not in run.stderr


def test_streaming_is_chosen_by_memory(tiny_qwen2):
    """Held while the weights take at most half the memory available; forced either way."""
    with open_model(tiny_qwen2.folder) as model:
        plan = memory_plan(model)
    assert plan.layers == 2 and plan.held > plan.layer > plan.layer_raw // 2 > 0
    assert weights.should_stream(10, 19, None) and not weights.should_stream(10, 20, None)
    assert weights.should_stream(10, 1 << 40, True) and not weights.should_stream(10, 1, False)
    path = tiny_qwen2.folder
    assert not choose_streaming([path], available=plan.held * 4).stream
    assert choose_streaming([path], force=True, available=1 << 40).stream
    assert not choose_streaming([path], force=False, available=1).stream
    both = choose_streaming([path, path], force=True, available=1 << 40)
    single = choose_streaming([path], force=True, available=1 << 40)
    assert both.held == 2 * single.held and both.peak > single.peak


def test_a_layer_that_cannot_fit_is_refused_by_name(tiny_qwen2):
    with pytest.raises(ModelMemoryError, match=r"layer \d+ needs .* decoded; streamed") as err:
        choose_streaming([tiny_qwen2.folder], force=True, available=1 << 20)
    assert str(tiny_qwen2.folder) in str(err.value)


def test_a_file_truncated_mid_stream_is_file_changed(tiny_factory, tmp_path, one_torch_thread):
    tiny = tiny_factory("qwen2", tied=False, dtype="float32", num_hidden_layers=3)
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny.folder / name).read_bytes())
    net = Transformer.from_file(folder, stream=True)
    file = folder / "model.safetensors"

    def truncate(i: int) -> None:
        if i == 0:
            os.truncate(file, file.stat().st_size // 2)

    net.streamed.on_layer = truncate  # type: ignore[union-attr]
    with pytest.raises(FileChangedError, match="changed"), torch.no_grad():
        net(torch.tensor(TOKENS))


def test_a_file_rewritten_in_place_mid_stream_is_file_changed(
    tiny_qwen2, tmp_path, one_torch_thread
):
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_qwen2.folder / name).read_bytes())
    net = Transformer.from_file(folder, stream=True)
    file = folder / "model.safetensors"

    def rewrite(i: int) -> None:
        if i == 0:
            with open(file, "r+b") as fh:  # same inode, same size, other bytes
                fh.seek(-64, os.SEEK_END)
                fh.write(bytes(64))
            os.utime(file, ns=(0, file.stat().st_mtime_ns + 10**9))

    net.streamed.on_layer = rewrite  # type: ignore[union-attr]
    changed = pytest.raises(FileChangedError, match="changed while its layers were streamed")
    with changed, torch.no_grad():
        net(torch.tensor(TOKENS))


BOUNDED = textwrap.dedent(
    """
    import re, resource, sys
    import torch
    from aprlib import Transformer, open_model, memory_plan
    from aprlib.forward import weights
    torch.set_num_threads(1)
    path, stream = sys.argv[1], sys.argv[2] == "stream"
    with open_model(path) as model:
        plan = memory_plan(model)
    size = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
    # the limit: what the process maps now, plus the streamed peak beyond the baseline
    limit = size + plan.streamed - weights.BASELINE_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        net = Transformer.from_file(path, stream=stream)
        with torch.no_grad():
            out = net(torch.tensor([[1, 2, 3, 4]]))
    except MemoryError:
        print("MemoryError", plan.held, limit - size)
        sys.exit(3)
    print("ok", float(out.double().sum()), plan.held, limit - size)
    """
)


def test_the_memory_bound_holds_under_ulimit(tmp_path):
    """A model whose held weights do not fit under ``ulimit -v`` set just above the
    streamed estimate runs streamed, to the same logits as held without the limit."""
    from safetensors.numpy import save_file

    from aprlib import ModelConfig

    hidden, inter, layers, vocab = 256, 2048, 24, 4096
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
        "max_position_embeddings": 64,
        "tie_word_embeddings": False,
    }
    from aprlib import expected_shapes
    from aprlib.config.modelconfig import from_hf

    rng = np.random.default_rng(0)
    shapes = expected_shapes(from_hf(cfg))
    state = {
        name: (rng.standard_normal(shape, dtype=np.float32) * (0.1 if "norm" not in name else 1))
        for name, shape in shapes.items()
    }
    folder = tmp_path / "m"
    folder.mkdir()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg))
    assert isinstance(from_hf(cfg), ModelConfig)

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", BOUNDED, str(folder), mode],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    streamed, held = run("stream"), run("held")
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    assert held.returncode == 3, (held.stdout, held.stderr[-2000:])  # held does not fit
    net = Transformer.from_file(folder)
    with torch.no_grad():
        expected = float(net(torch.tensor([[1, 2, 3, 4]])).double().sum())
    assert float(streamed.stdout.split()[1]) == expected


@pytest.mark.parametrize("tied", [False, True])
def test_streamed_bisect_lists_every_tensor_that_differs(
    tiny_factory, tmp_path, tied, one_torch_thread
):
    """The CRC32s taken as the layers stream, and the embedding rows no token read: a
    changed row nobody looks up is still listed, and two copies list nothing."""
    from safetensors.torch import load_file, save_file

    from aprlib import Side, bisect

    tiny = tiny_factory("llama", tied=tied)
    state = load_file(tiny.safetensors)
    copies = {}
    for name, edit in (
        ("same", None),
        ("row", "model.embed_tokens.weight"),
        ("norm", "model.norm.weight"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        edited = dict(state)
        if edit is not None:
            edited[edit] = edited[edit].clone()
            edited[edit][-1] += 0.5  # the last row (or element): no token below reads it
        save_file(edited, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text((tiny.folder / "config.json").read_text())
        copies[name] = folder

    def side(label, folder):
        net = Transformer.from_file(folder, stream=True)
        return Side(label, net, weights=str(folder))

    tokens = [1, 2, 3, 4]
    for name, expected in (
        ("same", []),
        ("row", ["model.embed_tokens.weight"]),
        ("norm", ["model.norm.weight"]),
    ):
        report = bisect(side("A", tiny.folder), side("B", copies[name]), tokens)
        assert report.weights_differ == expected, name
        if name == "row" and not tied:
            assert report.clean  # the row no token reads changes no activation
