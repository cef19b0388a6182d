"""Falsifiers of hostile-input-v1: no file can hang, crash or exhaust aprlib's readers.

Each check is a plain function that raises AssertionError when the claim is refuted, so
``tests/test_hostile_falsifiers_catch_defects.py`` can inject a defect and watch it fail.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aprlib import ConversionError, ModelFileError, open_model, write_model
from falsifiers import hostile_files as hf
from falsifiers.reproducible import reproducible

TYPED = (ModelFileError, ConversionError)
CASE_SECONDS = 2.0
RSS_BUDGET_MB = 300
EXAMPLES = 40  # per format: a few seconds each in CI; bench/bench_hostile.py runs thousands
KILLS = 30

# --- structure-aware strategies -----------------------------------------------------------

HOSTILE_U64 = [0, 1, 2, 7, 31, 32, 33, 64, 4096, 2**31, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1]
u64 = st.one_of(st.sampled_from(HOSTILE_U64), st.integers(0, 2**64 - 1))
small = st.integers(0, 300)
dims = st.lists(st.sampled_from([0, 1, 2, 4, 8, 32, 64, 256, 2**41, 2**63]), max_size=5)
GGUF_NAMES = ["token_embd.weight", "output_norm.weight", "output.weight", "blk.0.attn_q.weight"]
GGUF_NAMES += ["blk.0.attn_k.weight", "blk.0.ffn_up.weight", "junk", ""]
HF_NAMES = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "x", ""]


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def gguf_files(draw: Any) -> bytes:
    kvs = []
    if draw(st.booleans()):
        kvs += hf.qwen2_kv(
            heads=draw(st.sampled_from([0, 1, 2, 3, "x"])),
            kv_heads=draw(st.sampled_from([0, 1, 2])),
        )
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["general.alignment", "qwen2.block_count", "a", "\udcff"]))
        vtype = draw(st.integers(0, 14))
        body = draw(st.binary(max_size=24))
        if vtype == hf.ARRAY and draw(st.booleans()):
            etype, count = draw(st.integers(0, 13)), draw(u64)
            body = struct.pack("<IQ", etype, count) + draw(st.binary(max_size=64))
        elif vtype == hf.STRING and draw(st.booleans()):
            body = struct.pack("<Q", draw(u64)) + body
        kvs.append(
            hf.gguf_string(key.encode("utf-8", "surrogateescape")) + struct.pack("<I", vtype) + body
        )
    tensors = [
        (
            draw(st.sampled_from(GGUF_NAMES)),
            tuple(draw(dims)),
            draw(st.sampled_from([0, 1, 8, 12, 30, 2, 99])),
            draw(u64),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    data = draw(st.binary(max_size=512))
    out = hf.gguf_bytes(
        kvs,
        tensors,
        data,
        version=draw(st.sampled_from([3, 3, 2, 1, 2**32 - 1])),
        n_tensors=draw(st.one_of(st.none(), u64)),
        n_kv=draw(st.one_of(st.none(), u64)),
    )
    return _damage(draw, out)


@st.composite
def apr_files(draw: Any) -> bytes:
    metadata: Any = draw(
        st.one_of(
            st.just({}),
            st.builds(lambda c: {"config": c}, json_value),
            st.just(b'{"x": ' + nested(draw(st.sampled_from([10, 70, 5000]))) + b"}"),
            st.binary(max_size=16),
        )
    )
    entries = []
    for _ in range(draw(st.integers(0, 3))):
        shape = tuple(draw(st.lists(st.sampled_from([0, 1, 4, 16, 2**40, 2**41]), max_size=9)))
        entries.append(
            hf.AprEntry(
                draw(st.sampled_from(HF_NAMES)),
                draw(st.sampled_from([0, 1, 8, 12, 30, 2, 7, 2**32 - 1])),
                shape,
                draw(st.one_of(st.sampled_from([0, 64, 16]), u64)),
                draw(st.one_of(st.sampled_from([0, 16, 64]), u64)),
                draw(st.integers(0, 2**32 - 1)),
            )
        )
    data = draw(st.binary(max_size=256))
    out = hf.apr_bytes(
        metadata,
        entries,
        data,
        minor=draw(st.sampled_from([0, 1])),
        count=draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
        data_length=draw(st.one_of(st.none(), u64)),
    )
    return _damage(draw, out)


@st.composite
def safetensors_files(draw: Any) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        header: Any = draw(
            st.sampled_from([nested(100_000), b"\xff\xfe", b"[]", b'{"a": 1, "a": 2}'])
        )
    else:
        header = {}
        for name in draw(st.lists(st.sampled_from(HF_NAMES), max_size=3)):
            header[name] = {
                "dtype": draw(st.sampled_from(["F32", "F16", "BF16", "I8", ["F32"], 5, None])),
                "shape": draw(
                    st.one_of(
                        st.lists(st.one_of(st.integers(-2, 2**70), st.booleans()), max_size=4),
                        json_value,
                    )
                ),
                "data_offsets": draw(
                    st.one_of(st.lists(st.integers(-1, 2**65), min_size=2, max_size=2), json_value)
                ),
            }
        if draw(st.booleans()):
            header["__metadata__"] = draw(json_value)
    out = hf.safetensors_bytes(header, draw(st.binary(max_size=256)))
    if draw(st.integers(0, 4)) == 0:
        out = struct.pack("<Q", draw(u64)) + out[8:]
    return _damage(draw, out)


SHARD_TARGETS = [
    "a.safetensors",
    "b.safetensors",
    ".",
    "",
    "..",
    "../x",
    "/etc/passwd",
    "sub/c.safetensors",
    "link.safetensors",
    "fifo.safetensors",
    "missing.safetensors",
]


@st.composite
def sharded_folders(draw: Any) -> tuple[Any, bytes]:
    weight_map = draw(
        st.one_of(
            st.dictionaries(
                st.sampled_from(["w", "model.norm.weight"]),
                st.sampled_from(SHARD_TARGETS),
                max_size=3,
            ),
            json_value,
        )
    )
    return weight_map, draw(safetensors_files())


def _damage(draw: Any, data: bytes) -> bytes:
    """Sometimes cut the file, sometimes flip a few bytes."""
    choice = draw(st.integers(0, 5))
    if choice == 1 and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if choice == 2 and data:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
        return bytes(out)
    return data


# --- the checks -----------------------------------------------------------------------------


def exercise(path: Path, work: Path) -> str:
    """Open, read and check every tensor, convert to APR: 'ok' or the typed error's class.
    Anything else propagates (a refutation); so does a case slower than CASE_SECONDS."""
    start = time.monotonic()
    try:
        with open_model(path) as model:
            for t in model:
                t.verify()
                t.raw()
            write_model(model, work / "out.apr", checked=True)
        outcome = "ok"
    except TYPED as exc:
        outcome = type(exc).__name__
    elapsed = time.monotonic() - start
    assert elapsed < CASE_SECONDS, f"{path.name}: {elapsed:.2f} s for one case"
    return outcome


def fuzz(fmt: str, work: Path, examples: int = EXAMPLES, policy: Any = None) -> dict[str, Any]:
    """Run ``examples`` structure-aware cases of ``fmt`` (under the reproducible policy
    unless another hypothesis ``settings`` is given); returns outcome counts."""
    strategy = {
        "gguf": gguf_files(),
        "apr": apr_files(),
        "safetensors": safetensors_files(),
        "folder": sharded_folders(),
    }[fmt]
    outcomes: dict[str, int] = {}
    slowest = [0.0]

    @(policy or reproducible(examples))
    @given(strategy)
    def case(value: Any) -> None:
        for p in work.iterdir():
            _remove(p)
        if fmt == "folder":
            weight_map, shard = value
            path = _folder(work / "m", weight_map, shard)
        else:
            path = work / f"case.{fmt}"
            path.write_bytes(value)
        start = time.monotonic()
        try:
            outcome = exercise(path, work)
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"{fmt}: untyped {type(exc).__name__}: {exc}") from exc
        slowest[0] = max(slowest[0], time.monotonic() - start)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    case()
    return {
        "format": fmt,
        "cases": sum(outcomes.values()),
        "outcomes": outcomes,
        "slowest_s": round(slowest[0], 3),
    }


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        for child in p.iterdir():
            _remove(child)
        p.rmdir()
    else:
        p.unlink()


def _folder(folder: Path, weight_map: Any, shard: bytes) -> Path:
    hf.sharded_folder(folder, weight_map, {"a.safetensors": shard, "b.safetensors": shard})
    (folder / "sub").mkdir()
    (folder / "sub" / "c.safetensors").write_bytes(shard)
    (folder.parent / "outside.safetensors").write_bytes(shard)
    (folder / "link.safetensors").symlink_to(folder.parent / "outside.safetensors")
    os.mkfifo(folder / "fifo.safetensors")
    return folder


RACE = """
import os, random, sys
from aprlib import ConversionError, ModelFileError, open_model
path, rounds = sys.argv[1], int(sys.argv[2])
original = open(path, "rb").read()
rng = random.Random(0)
typed = 0
for i in range(rounds):
    with open(path, "wb") as fh:
        fh.write(original)
    with open_model(path) as model:
        os.truncate(path, rng.randrange(len(original)))
        for t in model:  # every tensor, even after the first error
            for read in (t.raw, t.verify):
                try:
                    read()
                except (ModelFileError, ConversionError):
                    typed += 1
print(typed)
"""


def truncation_race(path: Path, rounds: int = 20, before: str = "") -> int:
    """Open, truncate at a random point, read every tensor, ``rounds`` times, in a child;
    the child must end normally (never by a signal). Returns how many reads were typed
    errors."""
    env = {**os.environ, "PYTHONPATH": str(hf.ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", before + RACE, str(path), str(rounds)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=hf.ROOT,
    )
    assert proc.returncode >= 0, f"{path.name}: killed by signal {-proc.returncode}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.strip())


KILLER = """
import os, random, signal, sys, time
from aprlib import convert
src, dst, kills = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(0)
convert(src, dst)  # warm: imports and page cache
start = time.monotonic(); convert(src, dst); full = time.monotonic() - start
os.unlink(dst)
for _ in range(kills):
    pid = os.fork()
    if pid == 0:
        try:
            convert(src, dst)
        finally:
            os._exit(0)
    time.sleep(rng.uniform(0, full))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
left = [p for p in os.listdir(os.path.dirname(dst)) if p.startswith(".")]
print(len(left))
"""


def killed_converts(src: Path, dst: Path, kills: int = KILLS, before: str = "") -> dict[str, int]:
    """SIGKILL ``kills`` converts at random moments, then convert once more: nothing but
    the destination may be left in its folder. Returns temps seen before the last run."""
    env = {**os.environ, "PYTHONPATH": str(hf.ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", before + KILLER, str(src), str(dst), str(kills)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=hf.ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    left_by_kills = int(proc.stdout.strip())
    last = hf.run_apr("convert", str(src), str(dst), before=before, timeout=120)
    assert last.returncode == 0, last.stderr[-2000:]
    left = sorted(p.name for p in dst.parent.iterdir() if p.name != dst.name)
    assert left == [], f"left behind after the next run: {left}"
    with open_model(dst) as model:
        for t in model:
            t.verify()
    return {"kills": kills, "temps_left_by_kills": left_by_kills}


def _array_kv(key: str, etype: int, count: int, item: bytes) -> bytes:
    head = hf.gguf_string(key) + struct.pack("<IIQ", hf.ARRAY, etype, count)
    return head + item * count


AMPLIFIERS = {
    "gguf uint8 array 3 MB": lambda: hf.gguf_bytes(
        [*hf.qwen2_kv(), _array_kv("general.blob", hf.U8, 3_000_000, b"\x07")]
    ),
    "gguf 1M strings": lambda: hf.gguf_bytes(
        [
            *hf.qwen2_kv(),
            _array_kv("tokenizer.ggml.tokens", hf.STRING, 1_000_000, hf.gguf_string("t")),
        ]
    ),
    "apr metadata 20 MB of [],": lambda: hf.one_f32_apr(b'{"x": [' + b"[]," * (7 << 20) + b"[]]}"),
    "safetensors header 20 MB of 0,": lambda: hf.safetensors_bytes(
        b'{"x": [' + b"0," * (10 << 20) + b"0]}"
    ),
}


def amplifier(work: Path, name: str) -> Path:
    """A file whose parse could cost far more than its size."""
    suffix = name.split()[0]
    path = work / f"amplifier-{list(AMPLIFIERS).index(name)}.{suffix}"
    path.write_bytes(AMPLIFIERS[name]())
    return path


def peak_rss(path: Path, before: str = "") -> tuple[float, float]:
    """(peak RSS in MB of ``apr inspect`` on ``path`` in a child, the file's MB)."""
    run = hf.run_apr("inspect", str(path), before=before, timeout=120)
    assert not run.timed_out, f"{path.name}: timed out"
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    return run.peak_rss_mb, path.stat().st_size / 2**20


def check_rss(work: Path, before: str = "", only: str | None = None) -> dict[str, float]:
    worst = {}
    for name in AMPLIFIERS if only is None else [only]:
        path = amplifier(work, name)
        rss, size = peak_rss(path, before)
        assert rss < RSS_BUDGET_MB + size, f"{name}: peak RSS {rss:.0f} MB for a {size:.0f} MB file"
        worst[name] = round(rss, 1)
    return worst


def shards_opened(folder: Path, weight_map: Any) -> list[str]:
    """Every path ``open_model`` opens for a folder whose index says ``weight_map``."""
    opened: list[str] = []
    real = os.open

    def spy(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.path.realpath(path))
        return real(path, *args, **kwargs)

    os.open = spy  # type: ignore[assignment]
    try:
        with open_model(folder):
            pass
    except TYPED:
        pass
    finally:
        os.open = real  # type: ignore[assignment]
    return opened


# --- falsifiers ---------------------------------------------------------------------------


@pytest.mark.falsifies("FALSIFY-HOSTILE-001")
@pytest.mark.parametrize("fmt", ["gguf", "apr", "safetensors", "folder"])
def test_structured_fuzz_gives_models_or_typed_errors_fast(tmp_path, fmt, evidence):
    work = tmp_path / "work"
    work.mkdir()
    evidence.record(**fuzz(fmt, work), case_limit_s=CASE_SECONDS)


def _small_model(path: Path) -> Path:
    import numpy as np

    from aprlib import model_from_arrays
    from aprlib.config.modelconfig import ModelConfig
    from aprlib.formats.dtypes import DType

    rng = np.random.default_rng(3)
    cfg = ModelConfig("qwen2", 64, 256, 512, 1, 4, 2, 1e-6, 1e4, 64, False)
    shapes = {
        "model.embed_tokens.weight": (64, 256),
        "lm_head.weight": (64, 256),
        "model.norm.weight": (256,),
        "model.layers.0.mlp.up_proj.weight": (512, 256),
        "model.layers.0.mlp.down_proj.weight": (256, 512),
    }
    arrays = {
        n: (DType.F32, s, rng.standard_normal(s).astype(np.float32)) for n, s in shapes.items()
    }
    write_model(model_from_arrays(arrays, cfg), path)
    return path


@pytest.mark.falsifies("FALSIFY-HOSTILE-002")
@pytest.mark.parametrize("suffix", [".apr", ".gguf", ".safetensors"])
def test_a_file_truncated_while_open_never_kills_the_reader(tmp_path, suffix, evidence):
    path = _small_model(tmp_path / f"model{suffix}")
    typed = truncation_race(path)
    evidence.record(rounds=20, typed_read_errors=typed, signals=0)


@pytest.mark.falsifies("FALSIFY-HOSTILE-003")
def test_killed_converts_leave_nothing_after_the_next_run(tmp_path, evidence):
    src = _small_model(tmp_path / "model.apr")
    out = tmp_path / "dst"
    out.mkdir()
    evidence.record(**killed_converts(src, out / "model.gguf"))


@pytest.mark.falsifies("FALSIFY-HOSTILE-004")
def test_peak_rss_stays_within_budget_on_amplifying_files(tmp_path, evidence):
    evidence.record(peak_rss_mb=check_rss(tmp_path), budget_mb=RSS_BUDGET_MB)


@pytest.mark.falsifies("FALSIFY-HOSTILE-005")
def test_no_shard_outside_the_model_folder_is_ever_opened(tmp_path, evidence):
    shard = hf.safetensors_bytes(hf.one_tensor_header(), bytes(16))
    cases = [0]

    @reproducible(60)
    @given(
        st.dictionaries(
            st.sampled_from(["w", "v"]), st.sampled_from(SHARD_TARGETS), min_size=1, max_size=2
        )
    )
    def case(weight_map: dict[str, str]) -> None:
        work = tmp_path / "w"
        if work.exists():
            _remove(work)
        work.mkdir()
        folder = _folder(work / "m", weight_map, shard)
        root = os.path.realpath(folder)
        for opened in shards_opened(folder, weight_map):
            assert opened == root or opened.startswith(root + os.sep), f"opened {opened}"
        cases[0] += 1

    case()
    evidence.record(cases=cases[0])
