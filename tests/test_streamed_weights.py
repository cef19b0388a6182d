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


def copied(tiny, tmp_path: Path) -> Path:
    """The tiny model's folder copied, for a test that rewrites its file."""
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny.folder / name).read_bytes())
    return folder


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
        ("qwen3", True, "bfloat16"),
        ("mistral", False, "bfloat16"),  # a window of 4096: it masks nothing here
        ("olmo2", False, "float16"),
        ("gemma3_text", True, "bfloat16"),
        ("gemma2", False, "float32"),
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
    file = copied(tiny, tmp_path) / "model.safetensors"
    net = Transformer.from_file(file.parent, stream=True)

    def truncate(i: int) -> None:
        if i == 0:
            os.truncate(file, file.stat().st_size // 2)

    net.streamed.on_layer = truncate  # type: ignore[union-attr]
    with pytest.raises(FileChangedError, match="changed"), torch.no_grad():
        net(torch.tensor(TOKENS))


def test_a_file_rewritten_in_place_mid_stream_is_file_changed(
    tiny_qwen2, tmp_path, one_torch_thread
):
    file = copied(tiny_qwen2, tmp_path) / "model.safetensors"
    net = Transformer.from_file(file.parent, stream=True)

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
    # the limit: what the process maps now, plus the streamed peak beyond the baseline,
    # plus the address space the reader thread reserves, not uses (glibc's per-thread
    # arena, up to 128 MB mapped, and its 8 MB stack): a busy host flaked without it
    limit = size + plan.streamed - weights.BASELINE_BYTES + (136 << 20)
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

    hidden, inter, layers, vocab = 256, 2048, 64, 4096  # held: 0.46 GB, past the limit
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


# --- what a review found (each failed before its fix) -----------------------------------


def _until(points, name):
    for got, _ in points:
        if got == name:
            return


def test_a_layer_loaded_away_and_back_mid_layer_is_refused(tiny_qwen2, one_torch_thread):
    """A-B-A: forward A mid-way through layer 0, B loads layer 1, C loads layer 0 again:
    the index alone said "still layer 0" while A had computed k with layer 1's weights."""
    net = Transformer.from_file(tiny_qwen2.folder, stream=True)
    tokens = torch.tensor(TOKENS)
    with torch.no_grad():
        a = net.points(tokens, scores=False)
        _until(a, "layers.0.attn.q.pre_bias")
        _until(net.points(tokens, scores=False), "layers.1.attn_norm")
        _until(a, "layers.0.attn.k.pre_bias")
        _until(net.points(tokens, scores=False), "layers.0.attn_norm")
        with pytest.raises(RuntimeError, match="lockstep"):
            list(a)


@pytest.mark.parametrize("dtype", [None, "float32"])
def test_a_derived_net_sharing_the_base_buffers_is_refused_out_of_lockstep(
    tiny_qwen2, dtype, one_torch_thread
):
    from aprlib.forward.bisect import twin

    base = Transformer.from_file(tiny_qwen2.folder, stream=True)
    derived = twin(base, dtype=dtype)  # its weights are the base's own tensors
    tokens = torch.tensor(TOKENS)
    with torch.no_grad():
        b = derived.points(tokens, scores=False)
        _until(b, "layers.0.attn_norm")
        _until(base.points(tokens, scores=False), "layers.1.resid.mlp")
        with pytest.raises(RuntimeError, match="lockstep"):
            list(b)


@pytest.mark.parametrize("token", [96, -1])
def test_a_token_out_of_range_is_refused_not_read_from_other_bytes(tiny_qwen2, token):
    net = Transformer.from_file(tiny_qwen2.folder, stream=True)
    with pytest.raises(IndexError, match=f"token id {token} is out of range for 96"):
        net(torch.tensor([[1, token]]))


def test_streamed_bisect_of_two_copies_is_one_model_as_held(tiny_llama, tmp_path, one_torch_thread):
    """Equal weights in two files (F32 GGUF of the folder; a BF16 GGUF run in bfloat16):
    streamed, as held, one model with no weights check."""
    from aprlib import Side, bisect

    copy = model_file(tiny_llama, tmp_path, "gguf")
    bf16 = tmp_path / "bf16.gguf"
    with open_model(tiny_llama.folder) as model:
        write_model(model, bf16, dtype=DType.BF16, checked=True)
    for other, dtype in ((copy, torch.float32), (bf16, torch.bfloat16)):
        reports = []
        for stream in (True, False):
            sides = [
                Side(label, Transformer.from_file(p, dtype=dtype, stream=stream), weights=str(p))
                for label, p in (("A", tiny_llama.folder), ("B", other))
            ]
            report = bisect(*sides, [1, 2, 3])
            reports.append((report.same_weights, report.weights_differ, len(report.checks)))
        assert reports[0] == reports[1] == (True, [], 0), (other.name, reports)


def test_library_bisect_of_a_streamed_twin(tiny_qwen2, one_torch_thread):
    from aprlib import bisect
    from aprlib.forward.bisect import twin

    net = Transformer.from_file(tiny_qwen2.folder, stream=True)
    held = Transformer.from_file(tiny_qwen2.folder)
    for dtype in (None, "bfloat16"):
        streamed = bisect(net, twin(net, dtype=dtype), [1, 2, 3])
        expected = bisect(held, twin(held, dtype=dtype), [1, 2, 3])
        assert streamed.clean and expected.clean
        assert streamed.weights_differ == expected.weights_differ


def test_files_and_threads_go_with_the_net(tiny_qwen2, one_torch_thread):
    import gc
    import threading

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()
    fds, threads = open_fds(), threading.active_count()
    for _ in range(3):
        net = Transformer.from_file(tiny_qwen2.folder, stream=True)
        with torch.no_grad():
            net(torch.tensor(TOKENS))
        del net
    gc.collect()
    assert (open_fds(), threading.active_count()) == (fds, threads)


def test_an_apr_head_is_read_in_blocks_with_its_crc(
    tiny_qwen2, tmp_path, monkeypatch, one_torch_thread
):
    """APR's CRC32 covers a whole tensor: its head was decoded whole once per row block."""
    from aprlib.formats import modelfile

    monkeypatch.setattr(weights, "HEAD_BLOCK_BYTES", 8 * 64 * 4)
    path = model_file(tiny_qwen2, tmp_path, "apr")
    decoded: list[str] = []
    real = modelfile.Tensor.to_float32
    monkeypatch.setattr(modelfile.Tensor, "to_float32", lambda t: decoded.append(t.name) or real(t))
    net = Transformer.from_file(path, stream=True)
    with torch.no_grad():
        streamed = net(torch.tensor(TOKENS))
    assert [n for n in decoded if n.startswith(("lm_head", "model.embed"))] == []
    monkeypatch.setattr(modelfile.Tensor, "to_float32", real)
    assert torch.equal(streamed, logits(path, torch.float32, False))


def test_an_apr_head_with_corrupt_bytes_returns_no_logits(tiny_qwen2, tmp_path, monkeypatch):
    """A flipped byte in the head (read in blocks) is the format's CRC error before the
    last block's logits exist, not logits from corrupt weights."""
    from aprlib import AprFormatError

    monkeypatch.setattr(weights, "HEAD_BLOCK_BYTES", 8 * 64 * 4)
    path = model_file(tiny_qwen2, tmp_path, "apr")
    with open_model(path) as model:
        where = model.tensors["lm_head.weight"].span[1]  # type: ignore[index]
    with open(path, "r+b") as fh:  # one byte of the head's last block, in place
        fh.seek(where + 95 * 64 * 4 + 5)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x40]))
    net = Transformer.from_file(path, stream=True)
    with pytest.raises(AprFormatError, match="lm_head"), torch.no_grad():
        net(torch.tensor(TOKENS))


def test_a_file_rewritten_before_the_first_forward_is_file_changed(tiny_qwen2, tmp_path):
    file = copied(tiny_qwen2, tmp_path) / "model.safetensors"
    net = Transformer.from_file(file.parent, stream=True)
    with open(file, "r+b") as fh:
        fh.seek(-64, os.SEEK_END)
        fh.write(bytes(64))
    os.utime(file, ns=(0, file.stat().st_mtime_ns + 10**9))
    with pytest.raises(FileChangedError), torch.no_grad():
        net(torch.tensor(TOKENS))


def test_the_last_reference_dropped_on_the_reader_thread_releases_without_joining_itself():
    """CI saw ``RuntimeError: cannot join current thread`` from the finalizer: a net's
    last reference was dropped by its own prefetch on the reader thread."""
    from concurrent.futures import ThreadPoolExecutor

    from aprlib.forward import weights

    reader = ThreadPoolExecutor(1, thread_name_prefix=weights.READER_THREAD)
    errors: list[BaseException] = []

    def release_here() -> None:
        try:
            weights._release(reader, [])
        except BaseException as exc:  # what the finalizer would have swallowed
            errors.append(exc)

    reader.submit(release_here).result(timeout=10)
    assert errors == []
    reader.shutdown(wait=True)
