"""Falsifiers of finetune-from-init-v1: training starts from the file's weights, or not at all.

The init is a tiny Qwen2 (tied, GQA, non-square FFN, large biases) pretrained with
transformers on a Markov stream, saved as a safetensors folder and converted to APR and
GGUF F32. transformers' loss of those saved weights is the oracle for the step-0 loss.
Each ``check_*`` takes the pieces it attacks as arguments, so tests/ can hand it a
defective one and see it fail.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aprlib.cli.main import main as apr_main
from aprlib.config.modelconfig import from_hf
from aprlib.formats.conversion import convert, write_model
from aprlib.formats.dtypes import DType, from_float32
from aprlib.formats.io import EMBED, LM_HEAD, model_from_arrays, open_model
from aprlib.train.finetune import (
    InitLossError,
    Settings,
    evaluate,
    finetune,
    fresh_model,
    load_init,
    val_windows,
)
from falsifiers.pretrained import SEQ, Pretrained, one_thread, pretrain

SETTINGS = Settings(steps=6, lr=1e-3, batch=8, seq=SEQ, eval_every=3, eval_windows=16, seed=0)
# float32 forward vs transformers' float32 forward, in nats: they agree to ~1e-8 here; every
# weight rounded through BF16 on the way moves the loss by ~5e-5
ORACLE_TOLERANCE = 1e-5
EXPECT_TOLERANCE = 0.01  # nats above the oracle a defect-free load may sit (it sits at 1e-5)
FORMATS = ("safetensors", "apr", "gguf")
Finetune = Callable[..., Any]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


_SHARED: dict[str, Any] = {}  # one pretrained model per process, for tests/ as well


def shared_pretrained(factory: pytest.TempPathFactory) -> Pretrained:
    if "pretrained" not in _SHARED:
        _SHARED["pretrained"] = pretrain(factory.mktemp("pretrained"))
    return _SHARED["pretrained"]


def shared_inits(factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The pretrained model in every format: a safetensors folder, APR, GGUF F32."""
    if "inits" not in _SHARED:
        pretrained, work = shared_pretrained(factory), factory.mktemp("inits")
        paths = {"safetensors": pretrained.folder}
        for fmt in ("apr", "gguf"):
            paths[fmt] = work / f"init.{fmt}"
            convert(pretrained.folder / "model.safetensors", paths[fmt])
        _SHARED["inits"] = paths
    return _SHARED["inits"]


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Pretrained:
    return shared_pretrained(tmp_path_factory)


@pytest.fixture(scope="session")
def inits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return shared_inits(tmp_path_factory)


def windows(pretrained: Pretrained, settings: Settings = SETTINGS) -> torch.Tensor:
    return val_windows(np.load(pretrained.val), settings.seq, settings.eval_windows)


def oracle_loss(pretrained: Pretrained) -> float:
    return pretrained.hf_loss(windows(pretrained))


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Log records without what varies run to run (speed) or names the source (init)."""
    drop = {"tokens_per_s", "init"}
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


# --- 001 ---------------------------------------------------------------------------------


def check_scratch_unchanged(run: Finetune, pretrained: Pretrained, init: Path) -> dict:
    config = from_hf(json.loads((pretrained.folder / "config.json").read_text()))
    alone = run(pretrained.train, SETTINGS, val=pretrained.val, requested=config)
    flagged = run(pretrained.train, SETTINGS, init=init, val=pretrained.val, from_scratch=True)
    assert comparable(alone.records) == comparable(flagged.records), (
        "--init F --from-scratch trains differently from the same architecture without --init"
    )
    fresh = evaluate(fresh_model(config, SETTINGS.seed), windows(pretrained), SETTINGS.batch)
    assert alone.records[0]["val_loss"] == fresh, "step 0 is not fresh_model(config, seed)"
    assert alone.train_losses[-1] < alone.records[0]["val_loss"]
    return {"step0": fresh, "last_train_loss": alone.train_losses[-1]}


@pytest.mark.falsifies("FALSIFY-FINETUNE-001")
def test_from_scratch_path_is_unchanged_by_the_init_flag(pretrained, inits, evidence):
    evidence.record(**check_scratch_unchanged(finetune, pretrained, inits["apr"]))


# --- 002 ---------------------------------------------------------------------------------


def broken_inputs(pretrained: Pretrained, inits: dict[str, Path], work: Path) -> list[tuple]:
    """(case, extra CLI args, words the one-line error must contain)."""
    bad_magic = work / "bad.apr"
    bad_magic.write_bytes(b"NOPE" + inits["apr"].read_bytes()[4:])
    truncated = work / "truncated.apr"
    truncated.write_bytes(inits["apr"].read_bytes()[: inits["apr"].stat().st_size // 2])

    def edited(name: str, **changes: Any) -> Path:
        folder = work / name
        shutil.copytree(pretrained.folder, folder)
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    requested = work / "requested.json"
    config = json.loads((pretrained.folder / "config.json").read_text())
    requested.write_text(json.dumps({**config, "num_key_value_heads": 4}))
    wide = work / "wide.npy"
    np.save(wide, np.append(np.load(pretrained.val), np.uint32(pretrained.vocab)))
    big_tokenizer = edited("tok")
    vocab = {f"t{i}": i for i in range(pretrained.vocab + 5)}
    (big_tokenizer / "tokenizer.json").write_text(
        json.dumps(
            {"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}}
        )
    )
    small_tokenizer = work / "gpt2ish.json"  # the data's tokenizer: fewer entries than rows
    small_vocab = {f"t{i}": i for i in range(pretrained.vocab // 2)}
    small_tokenizer.write_text(
        json.dumps(
            {
                "version": "1.0",
                "model": {"type": "WordLevel", "vocab": small_vocab, "unk_token": "t0"},
            }
        )
    )
    return [
        ("missing", ["--init", str(work / "nope.apr")], ["nope.apr", "no such file"]),
        ("bad magic", ["--init", str(bad_magic)], ["bad.apr", "magic"]),
        ("truncated", ["--init", str(truncated)], ["truncated.apr"]),
        (
            "config/weights",
            ["--init", str(edited("narrow", intermediate_size=128))],
            ["narrow", "intermediate_size: config 128, weights 160"],
        ),
        (
            "untied config, tied weights",
            ["--init", str(edited("untied", tie_word_embeddings=False))],
            ["untied", "tie_word_embeddings: config False, weights True"],
        ),
        (
            "requested config",
            ["--init", str(inits["apr"]), "--config", str(requested)],
            ["num_key_value_heads: init 2, requested 4"],
        ),
        (
            "id >= vocab",
            ["--init", str(inits["apr"]), "--val", str(wide)],
            ["wide.npy", f"token id {pretrained.vocab}", "vocab_size"],
        ),
        ("tokenizer", ["--init", str(big_tokenizer)], ["tokenizer", str(pretrained.vocab + 5)]),
        (
            "data tokenizer",
            ["--init", str(inits["gguf"]), "--tokenizer", str(small_tokenizer)],
            ["gpt2ish.json", f"{pretrained.vocab // 2} entries", f"{pretrained.vocab} rows"],
        ),
    ]


def check_fails_fast(
    main: Callable[[list[str]], int],
    cases: list[tuple],
    data: Path,
    work: Path,
    capsys: pytest.CaptureFixture,
) -> int:
    for case, args, words in cases:
        out = work / f"ckpt-{case.replace(' ', '_').replace('/', '_')}.apr"
        argv = ["finetune", "--data", str(data), "--steps", "2", "--seq", str(SEQ)]
        rc = main([*argv, "--out", str(out), *args])
        err = capsys.readouterr().err.strip()
        assert rc == 1, f"{case}: exit {rc}, expected 1 ({err})"
        assert len(err.splitlines()) == 1 and err.startswith("apr: error:"), f"{case}: {err!r}"
        for word in words:
            assert word in err, f"{case}: {word!r} not in {err!r}"
        assert not out.exists() and not out.with_suffix(".jsonl").exists(), f"{case}: wrote output"
    return len(cases)


@pytest.mark.falsifies("FALSIFY-FINETUNE-002")
def test_each_unusable_input_fails_fast_by_name(pretrained, inits, tmp_path, capsys, evidence):
    cases = broken_inputs(pretrained, inits, tmp_path)
    evidence.record(cases=check_fails_fast(apr_main, cases, pretrained.train, tmp_path, capsys))


# --- 003 and 004 -------------------------------------------------------------------------


def step_zero_of(run: Finetune, pretrained: Pretrained, init: Path, **kwargs: Any) -> Any:
    settings = dataclasses.replace(SETTINGS, steps=1)
    return run(pretrained.train, settings, init=init, val=pretrained.val, **kwargs).step_zero


def check_init_loss_is_the_models_own(run: Finetune, pretrained: Pretrained, init: Path) -> dict:
    oracle = oracle_loss(pretrained)
    zero = step_zero_of(run, pretrained, init, force=True)  # measure; the gate is 008's
    assert abs(zero.init_loss - oracle) <= ORACLE_TOLERANCE, (
        f"{init.name}: step-0 loss {zero.init_loss:.6f}, transformers {oracle:.6f}"
    )
    return {"init_loss": zero.init_loss, "oracle": oracle, "tolerance": ORACLE_TOLERANCE}


@pytest.mark.falsifies("FALSIFY-FINETUNE-003")
@pytest.mark.parametrize("fmt", FORMATS)
def test_init_loss_equals_the_saved_models_own(pretrained, inits, fmt, evidence):
    evidence.record(**check_init_loss_is_the_models_own(finetune, pretrained, inits[fmt]))


def check_init_beats_both_bounds(run: Finetune, pretrained: Pretrained, init: Path) -> dict:
    zero = step_zero_of(run, pretrained, init, force=True)
    assert zero.ln_vocab == math.log(pretrained.vocab)
    assert zero.init_loss < zero.ln_vocab, f"{zero.init_loss} >= ln(vocab) {zero.ln_vocab}"
    assert zero.init_loss < zero.scratch_loss, f"{zero.init_loss} >= scratch {zero.scratch_loss}"
    assert zero.arrived
    return {"init": zero.init_loss, "ln_vocab": zero.ln_vocab, "scratch": zero.scratch_loss}


@pytest.mark.falsifies("FALSIFY-FINETUNE-004")
@pytest.mark.parametrize("fmt", FORMATS)
def test_init_loss_is_below_uniform_and_from_scratch(pretrained, inits, fmt, evidence):
    evidence.record(**check_init_beats_both_bounds(finetune, pretrained, inits[fmt]))


# --- 005 ---------------------------------------------------------------------------------


def check_loss_decreases(run: Finetune, pretrained: Pretrained, init: Path) -> dict:
    scratch = dataclasses.replace(SETTINGS, steps=40, lr=3e-3, eval_every=40)
    fresh = run(pretrained.train, scratch, init=init, val=pretrained.val, from_scratch=True)
    first, last = fresh.records[0]["val_loss"], fresh.records[-1]["val_loss"]
    assert last < 0.7 * first, f"from scratch: val loss {first:.4f} -> {last:.4f}"
    tune = dataclasses.replace(SETTINGS, steps=10, lr=3e-4, eval_every=10)
    tuned = run(pretrained.train, tune, init=init, val=pretrained.val)
    start, end = tuned.records[0]["val_loss"], tuned.records[-1]["val_loss"]
    assert end <= start + 1e-3, f"fine-tune: val loss rose {start:.4f} -> {end:.4f}"
    return {"scratch_first": first, "scratch_last": last, "tune_first": start, "tune_last": end}


@pytest.mark.falsifies("FALSIFY-FINETUNE-005")
def test_loss_decreases_on_a_learnable_stream(pretrained, inits, evidence):
    evidence.record(**check_loss_decreases(finetune, pretrained, inits["apr"]))


# --- 006 and 007 -------------------------------------------------------------------------


def check_checkpoint_round_trips(
    run: Finetune, pretrained: Pretrained, init: Path, work: Path
) -> dict:
    settings = dataclasses.replace(SETTINGS, steps=20, eval_every=10, save_every=10)
    straight = run(pretrained.train, settings, init=init, val=pretrained.val, out=work / "a.apr")
    model, _, _ = load_init(work / "a.apr")
    reloaded = evaluate(model, windows(pretrained, settings), settings.batch)
    assert reloaded == straight.records[-1]["val_loss"], "the checkpoint does not reload exactly"
    out = work / "b.apr"

    def killed_at_13(record: dict[str, Any]) -> None:
        if record["step"] == 13:
            raise KeyboardInterrupt  # the run dies between its checkpoints at 10 and 20

    with pytest.raises(KeyboardInterrupt):
        run(pretrained.train, settings, init=init, val=pretrained.val, out=out, report=killed_at_13)
    resumed = run(pretrained.train, settings, val=pretrained.val, out=out, resume=True)
    assert comparable(resumed.records) == comparable(straight.records), (
        "killed at 13, resumed from 10: the run differs from 20 uninterrupted steps"
    )
    logged = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert comparable(logged) == comparable(straight.records), "the JSONL log disagrees"
    return {"final_val_loss": reloaded, "steps": settings.steps}


@pytest.mark.falsifies("FALSIFY-FINETUNE-006")
def test_checkpoint_round_trips_and_resumes_exactly(pretrained, inits, tmp_path, evidence):
    evidence.record(**check_checkpoint_round_trips(finetune, pretrained, inits["apr"], tmp_path))


def check_deterministic(run: Finetune, pretrained: Pretrained, init: Path) -> dict:
    settings = dataclasses.replace(SETTINGS, steps=8, seed=3)
    a = run(pretrained.train, settings, init=init, val=pretrained.val)
    b = run(pretrained.train, settings, init=init, val=pretrained.val)
    assert comparable(a.records) == comparable(b.records), "same seed, different run"
    c = run(pretrained.train, dataclasses.replace(settings, seed=4), init=init, val=pretrained.val)
    assert a.train_losses != c.train_losses, "the seed does not reach the run"
    return {"steps": settings.steps, "last_train_loss": a.train_losses[-1]}


@pytest.mark.falsifies("FALSIFY-FINETUNE-007")
def test_same_seed_same_losses(pretrained, inits, evidence):
    evidence.record(**check_deterministic(finetune, pretrained, inits["apr"]))


# --- 008 ---------------------------------------------------------------------------------


def clean_arrays(init: Path, dtype: DType = DType.F32) -> tuple[dict, Any]:
    with open_model(init) as m:
        return {t.name: (dtype, t.shape, from_float32(t.to_float32(), dtype)) for t in m}, m.config


def _transposed(entry: tuple) -> tuple:
    dtype, shape, raw = entry
    return dtype, shape, raw.view(np.float32).reshape(shape).T.copy()


def _zeroed(entry: tuple) -> tuple:
    dtype, shape, _ = entry
    return dtype, shape, np.zeros(shape, np.float32)


def defective_inits(init: Path, work: Path) -> dict[str, Path]:
    """One APR per load defect, each written from the clean init as a faulty loader sees it."""
    arrays, config = clean_arrays(init)
    bf16, _ = clean_arrays(init, DType.BF16)
    defects: dict[str, tuple[dict, Any]] = {
        # one tensor's BF16 bytes labelled F16: the incident
        "bf16_as_f16": ({**bf16, EMBED: (DType.F16, *bf16[EMBED][1:])}, config),
        "transposed_ffn": (
            {n: _transposed(e) if ".mlp." in n else e for n, e in arrays.items()},
            config,
        ),
        "dropped_bias": (
            {n: _zeroed(e) if n.endswith("_proj.bias") else e for n, e in arrays.items()},
            config,
        ),
        "untied_head": (
            {
                **arrays,
                LM_HEAD: (
                    DType.F32,
                    arrays[EMBED][1],
                    np.random.default_rng(0).normal(0, 0.02, arrays[EMBED][1]).astype(np.float32),
                ),
            },
            dataclasses.replace(config, tie_word_embeddings=False),
        ),
    }
    paths = {}
    for name, (tensors, cfg) in defects.items():
        paths[name] = work / f"{name}.apr"
        write_model(model_from_arrays(tensors, cfg), paths[name])
    return paths


def check_defects_caught(
    run: Finetune, pretrained: Pretrained, init: Path, work: Path
) -> dict[str, float]:
    oracle = oracle_loss(pretrained)
    clean = step_zero_of(run, pretrained, init, expect_loss=oracle).init_loss
    settings = dataclasses.replace(SETTINGS, steps=2)
    losses = {"clean": clean}
    for name, path in defective_inits(init, work).items():
        out = work / f"{name}-ckpt.apr"
        seen: list[dict[str, Any]] = []
        with pytest.raises(InitLossError):
            run(
                pretrained.train,
                settings,
                init=path,
                val=pretrained.val,
                out=out,
                report=seen.append,
                expect_loss=oracle,
                expect_tolerance=EXPECT_TOLERANCE,
            )
        assert [r["step"] for r in seen] == [0], f"{name}: a training step ran"
        assert not out.exists(), f"{name}: a checkpoint was written"
        losses[name] = seen[0]["val_loss"]
        assert losses[name] > clean + EXPECT_TOLERANCE, f"{name}: step-0 loss did not rise"
    # the incident's own signature needs no expected loss: above ln(vocab)
    with pytest.raises(InitLossError, match=r"ln\(vocab\)"):
        step_zero_of(run, pretrained, work / "bf16_as_f16.apr")
    return losses


@pytest.mark.falsifies("FALSIFY-FINETUNE-008")
def test_each_load_defect_is_caught_before_training(pretrained, inits, tmp_path, evidence):
    evidence.record(**check_defects_caught(finetune, pretrained, inits["apr"], tmp_path))
