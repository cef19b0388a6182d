"""apr finetune: every falsifier of finetune-from-init-v1 turns red on a defect of its class,
and the incident's cases (a hard-coded architecture, a BF16 tensor read as F16) are refused.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

import aprlib.train.checkpoint as ckpt
import aprlib.train.finetune as ft
from aprlib.cli.main import main as apr_main
from aprlib.config.modelconfig import from_hf, to_hf
from aprlib.formats.conversion import convert
from falsifiers import test_finetune_from_init_v1 as fal
from falsifiers.pretrained import one_thread

RED = (AssertionError, pytest.fail.Exception)  # a check that fails: an assert or pytest.raises


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return fal.shared_pretrained(tmp_path_factory)


@pytest.fixture(scope="module")
def inits(tmp_path_factory):
    return fal.shared_inits(tmp_path_factory)


def _config(pretrained):
    return from_hf(json.loads((pretrained.folder / "config.json").read_text()))


# --- each falsifier is red on its defect ---------------------------------------------------


def test_001_red_when_the_init_leaks_into_from_scratch(pretrained, inits):
    def leaky(data, settings, **kw):
        kw["from_scratch"] = False  # the flag is read but the init weights are used anyway
        return ft.finetune(data, settings, **kw)

    with pytest.raises(RED):
        fal.check_scratch_unchanged(leaky, pretrained, inits["apr"])


def test_002_red_on_a_random_init_fallback(pretrained, inits, tmp_path, capsys, monkeypatch):
    real, config = ft.load_init, _config(pretrained)

    def fallback(path, requested=None, device="cpu"):
        try:
            return real(path, requested, device)
        except Exception:  # the silent fallback the incident feared
            return ft.fresh_model(config, 0), config, None

    monkeypatch.setattr(ft, "load_init", fallback)
    cases = fal.broken_inputs(pretrained, inits, tmp_path)
    with pytest.raises(RED):
        fal.check_fails_fast(apr_main, cases, pretrained.train, tmp_path, capsys)


def _loader_with(monkeypatch, change):
    real = ft.Transformer.from_file

    def from_file(*args, **kwargs):
        net = real(*args, **kwargs)
        with torch.no_grad():
            change(net)
        return net

    monkeypatch.setattr(ft.Transformer, "from_file", from_file)


def _round_through_bf16(net):
    for p in net.parameters():
        p.copy_(p.to(torch.bfloat16).float())


def _drop_q_bias(net):
    for layer in net.model.layers:
        layer.self_attn.q_proj.bias.zero_()


@pytest.mark.parametrize("defect", [_round_through_bf16, _drop_q_bias])
def test_003_red_when_the_loader_changes_values(pretrained, inits, monkeypatch, defect):
    _loader_with(monkeypatch, defect)
    with pytest.raises(RED):
        fal.check_init_loss_is_the_models_own(ft.finetune, pretrained, inits["apr"])


def test_004_red_when_the_loader_returns_fresh_weights(pretrained, inits, monkeypatch):
    def fresh(net):
        net.load_state_dict(ft.fresh_model(net.config, 0).state_dict())

    _loader_with(monkeypatch, fresh)
    with pytest.raises(RED):
        fal.check_init_beats_both_bounds(ft.finetune, pretrained, inits["apr"])


def test_005_red_when_no_update_reaches_the_weights(pretrained, inits, monkeypatch):
    monkeypatch.setattr(ft, "lr_at", lambda step, settings: 0.0)
    with pytest.raises(RED):
        fal.check_loss_decreases(ft.finetune, pretrained, inits["apr"])


def test_006_red_on_a_lossy_checkpoint(pretrained, inits, tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "CHECKPOINT_DTYPE", ckpt.DType.BF16)
    with pytest.raises(RED):
        fal.check_checkpoint_round_trips(ft.finetune, pretrained, inits["apr"], tmp_path)


def test_006_red_when_the_optimiser_state_is_not_restored(pretrained, inits, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.optim.AdamW, "load_state_dict", lambda self, state: None)
    with pytest.raises(RED):
        fal.check_checkpoint_round_trips(ft.finetune, pretrained, inits["apr"], tmp_path)


def test_007_red_on_an_unseeded_batch_stream(pretrained, inits, monkeypatch):
    real = ft.Batches.__init__

    def unseeded(self, ids, batch, seq, seed):
        real(self, ids, batch, seq, int.from_bytes(os.urandom(4), "little"))

    monkeypatch.setattr(ft.Batches, "__init__", unseeded)
    with pytest.raises(RED):
        fal.check_deterministic(ft.finetune, pretrained, inits["apr"])


def test_008_red_when_the_gate_is_off(pretrained, inits, tmp_path, monkeypatch):
    monkeypatch.setattr(ft.StepZero, "arrived", property(lambda self: True))
    with pytest.raises(RED):
        fal.check_defects_caught(ft.finetune, pretrained, inits["apr"], tmp_path)


def test_008_red_when_the_gate_ignores_the_expected_loss(pretrained, inits, tmp_path, monkeypatch):
    real = ft.StepZero.failures.fget

    def only_bounds(self):
        return [f for f in real(self) if "expected" not in f]

    monkeypatch.setattr(ft.StepZero, "failures", property(only_bounds))
    with pytest.raises(RED):
        fal.check_defects_caught(ft.finetune, pretrained, inits["apr"], tmp_path)


# --- the incident ------------------------------------------------------------------------


def test_a_trainer_shaped_for_another_model_is_refused_naming_every_field(
    pretrained, inits, tmp_path, capsys
):
    """The 370M-Llama trainer meeting a Qwen2 checkpoint: --arch names what differs."""
    out = tmp_path / "ckpt.apr"
    argv = ["finetune", "--init", str(inits["gguf"]), "--data", str(pretrained.train)]
    rc = apr_main([*argv, "--steps", "1", "--arch", "qwen2_0_5b", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    for field in (
        "hidden_size: init 64, requested 896",
        "num_attention_heads: init 4, requested 14",
        "intermediate_size: init 160, requested 4864",
        "vocab_size: init 96, requested 151936",
        "rope_theta: init 10000.0, requested 1000000.0",
    ):
        assert field in err
    assert not out.exists()


def test_a_requested_config_that_matches_is_accepted(pretrained, inits, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(to_hf(_config(pretrained))))
    rc = apr_main(
        [
            "finetune",
            "--init",
            str(inits["apr"]),
            "--data",
            str(pretrained.train),
            "--steps",
            "1",
            "--seq",
            "32",
            "--config",
            str(config),
            "--json",
        ]
    )
    assert rc == 0


def test_cli_end_to_end_from_gguf_and_apr(pretrained, inits, tmp_path, capsys):
    """Done means: fine-tuned from each format, equal step-0 losses below both bounds,
    a JSONL log and a checkpoint that `apr finetune --resume` continues."""
    zero = {}
    for fmt in ("apr", "gguf"):
        out = tmp_path / f"{fmt}.apr"
        argv = ["finetune", "--init", str(inits[fmt]), "--data", str(pretrained.train)]
        argv += ["--val", str(pretrained.val), "--steps", "3", "--seq", "32", "--batch", "4"]
        assert apr_main([*argv, "--out", str(out), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        zero[fmt] = doc["step_zero"]
        assert zero[fmt]["init_loss"] < min(zero[fmt]["ln_vocab"], zero[fmt]["scratch_loss"])
        log = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [0, 1, 2, 3]
        assert {"train_loss", "val_loss", "lr", "grad_norm"} <= set(log[1])
    assert abs(zero["apr"]["init_loss"] - zero["gguf"]["init_loss"]) < 1e-5
    argv = ["finetune", "--data", str(pretrained.train), "--val", str(pretrained.val)]
    resumed = [*argv, "--steps", "5", "--seq", "32", "--batch", "4", "--resume"]
    assert apr_main([*resumed, "--out", str(tmp_path / "apr.apr")]) == 0
    assert "done: step 5" in capsys.readouterr().out
    again = ["finetune", "--init", str(inits["apr"]), "--data", str(pretrained.train)]
    assert apr_main([*again, "--steps", "1", "--out", str(tmp_path / "apr.apr")]) == 1
    assert "exists: pass --resume" in capsys.readouterr().err  # a finished run is not clobbered


def test_step_zero_refusal_prints_the_bounds_and_force_overrides(
    pretrained, inits, tmp_path, capsys
):
    bad = fal.defective_inits(inits["apr"], tmp_path)["bf16_as_f16"]
    argv = ["finetune", "--init", str(bad), "--data", str(pretrained.train), "--seq", "32"]
    assert apr_main([*argv, "--steps", "1"]) == 1
    captured = capsys.readouterr()
    assert "step 0: val loss" in captured.out and "ln(vocab) 4.5643" in captured.out
    [line] = captured.err.strip().splitlines()
    assert "not below ln(vocab)" in line and "--force" in line
    assert "apr qa: std_range FAIL: model.embed_tokens.weight std" in line  # names the tensor
    assert apr_main([*argv, "--steps", "1", "--force"]) == 0


def test_resume_refuses_optimiser_state_of_other_weights(pretrained, inits, tmp_path):
    settings = dataclasses.replace(fal.SETTINGS, steps=2)
    out = tmp_path / "c.apr"
    ft.finetune(pretrained.train, settings, init=inits["apr"], val=pretrained.val, out=out)
    state = torch.load(ckpt.sidecar(out), weights_only=False)
    state["weights_digest"] ^= 1  # a sidecar torn from its weights by a kill between renames
    torch.save(state, ckpt.sidecar(out))
    with pytest.raises(ckpt.CheckpointError, match="does not belong to the weights"):
        ft.finetune(
            pretrained.train,
            dataclasses.replace(settings, steps=4),
            val=pretrained.val,
            out=out,
            resume=True,
        )


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        apr_main(["finetune", "--help"])
    assert exc.value.code == 0
    assert "--from-scratch" in capsys.readouterr().out
    data = tmp_path / "d.bin"
    data.write_bytes(b"\0\0" * 100)
    assert apr_main(["finetune", "--data", str(data), "--steps", "1"]) == 1
    assert "give --init MODEL" in capsys.readouterr().err
    assert apr_main(["finetune", "--data", str(data), "--steps", "0", "--arch", "x"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(("arch", "tied"), [("llama", False), ("qwen2", False)])
def test_step_zero_equals_transformers_for_other_families(tiny_factory, tmp_path, arch, tied):
    """Llama (q/k permuted in GGUF) and an untied Qwen2: the step-0 loss through GGUF is
    transformers' loss of the same random weights (forced: random weights fail the gate)."""
    tiny = tiny_factory(arch, tied=tied)
    gguf = tmp_path / "m.gguf"
    convert(tiny.safetensors, gguf)
    ids = np.random.default_rng(1).integers(0, 96, size=600).astype(np.uint16)
    ids.tofile(tmp_path / "t.bin")
    settings = dataclasses.replace(fal.SETTINGS, steps=1, eval_windows=4)
    result = ft.finetune(tmp_path / "t.bin", settings, init=gguf, force=True)
    cut = len(ids) - max(settings.seq + 1, len(ids) // 10)
    windows = ft.val_windows(ids[cut:], settings.seq, settings.eval_windows)
    with torch.no_grad():
        oracle = float(tiny.model(windows, labels=windows).loss)
    assert abs(result.step_zero.init_loss - oracle) < 1e-5


def test_a_kill_between_weights_and_state_is_refused_on_resume(
    pretrained, inits, tmp_path, monkeypatch
):
    settings = dataclasses.replace(fal.SETTINGS, steps=4, save_every=2)
    out = tmp_path / "k.apr"
    real = ckpt._atomic_torch_save

    def die_at_step_4(state, path):
        if state["step"] == 4:
            raise KeyboardInterrupt  # the weights of step 4 are in place, the state is not
        real(state, path)

    monkeypatch.setattr(ckpt, "_atomic_torch_save", die_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(pretrained.train, settings, init=inits["apr"], val=pretrained.val, out=out)
    assert not list(tmp_path.glob(".k.apr*")), "a temporary file was left behind"
    with pytest.raises(ckpt.CheckpointError, match=r"optimiser state \(step 2\) does not belong"):
        ft.finetune(pretrained.train, settings, val=pretrained.val, out=out, resume=True)
