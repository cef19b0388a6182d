"""Sliding-window attention (issue 25): Mistral as its own family, Qwen2/Qwen3's windowed
layers, and the two llama.cpp converters that do not keep a window.

The forward's parity with transformers is FALSIFY-FWD-001..004 (hypothesis draws windows);
here: the window survives every format both ways and loads back into transformers as the
same model; llama.cpp's gap is said, true and found by bisect; a kernel without a window
refuses instead of computing full attention.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aprlib import Transformer, convert, diff_models, open_model
from aprlib.cli.main import main as apr
from aprlib.forward.logits import llamacpp_logits, reference_logits
from conftest import build_tiny
from falsifiers.llamacpp_oracle import require_llama_cpp

WINDOWED = {
    "mistral": {"sliding_window": 4},
    "qwen2": {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1},
    "qwen3": {
        "use_sliding_window": True,
        "sliding_window": 5,
        "layer_types": ["sliding_attention", "full_attention"],
    },
}
TOKENS = [3, 17, 42, 5, 88, 1, 60, 29, 11, 70, 2, 9]


def transformers_logits(folder: Path, tokens: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("arch", sorted(WINDOWED))
def test_the_window_survives_every_format_and_loads_back_into_transformers(
    tiny_factory, tmp_path, arch
):
    """HF → GGUF → APR → HF folder: the config keeps each layer's window, and transformers
    loads the folder back as the same model (a window dropped changes every position past
    it: Mistral written as llama did)."""
    tiny = tiny_factory(arch, **WINDOWED[arch])
    convert(tiny.folder, tmp_path / "m.gguf")
    convert(tmp_path / "m.gguf", tmp_path / "m.apr")
    (tmp_path / "back").mkdir()
    convert(tmp_path / "m.apr", tmp_path / "back" / "model.safetensors")
    with open_model(tiny.folder) as src:
        want = src.config
        for path in (tmp_path / "m.gguf", tmp_path / "m.apr", tmp_path / "back"):
            with open_model(path) as m:
                assert m.config == want, path.name
                assert diff_models(src, m).clean
    assert want.sliding_window == WINDOWED[arch]["sliding_window"]
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    assert written["model_type"] == arch
    ours = transformers_logits(tmp_path / "back", TOKENS)
    with torch.no_grad():
        theirs = tiny.model(torch.tensor([TOKENS])).logits[0]
    assert float((ours - theirs).abs().max()) < 1e-5


def test_a_windowed_model_differs_from_itself_unwindowed(tiny_factory):
    """The windows above bite on these tokens (else the tests above could not fail)."""
    for arch, window in WINDOWED.items():
        tiny = tiny_factory(arch, **window)
        net = Transformer.from_file(tiny.folder)
        import dataclasses

        full = Transformer(dataclasses.replace(net.config, sliding_window=None, layer_types=None))
        full.load_state_dict(net.state_dict(), strict=True, assign=True)
        with torch.no_grad():
            gap = (net(torch.tensor([TOKENS])) - full(torch.tensor([TOKENS]))).abs().max()
        assert float(gap) > 1e-3, arch


def test_llama_cpp_runs_our_mistral_without_its_window_as_the_note_says(tiny_factory, tmp_path):
    """The convert note says llama.cpp agrees only up to the window: true, and no further."""
    require_llama_cpp()
    tiny = tiny_factory("mistral", hidden_size=256, intermediate_size=512, sliding_window=4)
    gguf = tmp_path / "m.gguf"
    assert apr(["convert", str(tiny.folder), str(gguf)]) == 0
    ours = reference_logits(tiny.folder, TOKENS)
    theirs = llamacpp_logits(gguf, TOKENS)
    gap = np.abs(ours - theirs).max(axis=-1)
    assert gap[:4].max() < 1e-3, gap  # within the window: the same model
    assert gap[4:].min() > 1e-3, gap  # past it: every position differs


def test_bisect_names_llama_cpps_missing_window_at_attn_out(tiny_factory, tmp_path, capsys):
    require_llama_cpp()
    tiny = tiny_factory("mistral", sliding_window=4)
    gguf = tmp_path / "m.gguf"
    assert apr(["convert", str(tiny.folder), str(gguf)]) == 0
    capsys.readouterr()
    tokens = ",".join(str(t) for t in TOKENS)
    args = ["bisect", str(tiny.folder), str(gguf), "--backend-b", "llama.cpp", "--tokens", tokens]
    assert apr([*args, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "DIVERGED" and report["configs_differ"] == []
    assert report["findings"] == ["introduced in B's engine at layers.0.attn.out (kqv_out-0)"]


def test_llama_cpps_converter_drops_the_window_and_diff_says_only_that(tiny_factory, tmp_path):
    """llama.cpp's converter writes a Mistral as a "llama" GGUF without its window: the
    tensors are the same, and the diff names the one field that changed the model."""
    from falsifiers.llamacpp_converter import convert_hf_to_gguf
    from falsifiers.test_tokenizer_fidelity_v1 import VOCAB, hf_folder_with_tokenizer

    tiny = tiny_factory("mistral", vocab_size=VOCAB, sliding_window=4)
    folder, _ = hf_folder_with_tokenizer(tiny, "llama-bpe", tmp_path)
    gguf = convert_hf_to_gguf(folder, tmp_path / "theirs.gguf", "llama-bpe")
    with open_model(folder) as hf, open_model(gguf) as theirs:
        assert theirs.config.architecture == "llama" and theirs.config.sliding_window is None
        report = diff_models(hf, theirs)
        assert [(f.field, f.a, f.b) for f in report.config] == [("sliding_window", 4, None)]
        assert all(p.tag == "IDENTICAL" for p in report.pairs)
        assert not report.passes()


def test_the_triton_kernel_refuses_a_window_it_cannot_mask():
    pytest.importorskip("triton")
    from provable_kernels.ops import TritonOps

    q = torch.zeros(1, 2, 6, 8)
    with pytest.raises(NotImplementedError, match="no sliding-window mask"):
        TritonOps().attention(q, q, q, window=3)


def test_transformers_capture_of_a_windowed_mistral_is_the_reference(tmp_path):
    from aprlib import bisect_module

    tiny = build_tiny(tmp_path, "mistral", sliding_window=3)
    report = bisect_module(tiny.model, TOKENS)
    assert report.clean, report.findings()
