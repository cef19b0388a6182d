"""`apr diff HF_DIR X --expect quantized` over the pipelines users run: no false alarm.

    python bench/bench_diff_pipelines.py WORKDIR [--types Q8_0,Q4_K_M,...] [--small]

A tiny random Qwen2 (every tensor random; hidden 256, FFN 512 so K-quant rows are whole
blocks, or the 64-wide test model with ``--small``) with a real tokenizer goes through
llama.cpp's own converter (``convert_hf_to_gguf.py`` from the llama-cpp-python sdist) to
GGUF f32, f16, bf16 and q8_0, then ``llama_model_quantize`` (in a child process) makes every
type it accepts from each of the f32/f16/bf16 files. Each result is diffed against the HF
folder; the last line counts pairs tried, false alarms (anything but IDENTICAL, EQUIVALENT
or QUANT_NOISE) and tokenizer-only findings. Types llama.cpp refuses (the I-quants that
need an importance matrix) are listed as QFAIL, not counted.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aprlib import diff_models, open_model
from aprlib.forward import llamacpp
from conftest import build_tiny
from falsifiers.llamacpp_converter import convert_hf_to_gguf
from falsifiers.test_tokenizer_fidelity_v1 import VOCAB, hf_folder_with_tokenizer

TYPES = (
    "Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,Q2_K,Q2_K_S,Q3_K_S,Q3_K_M,Q3_K_L,Q4_K_S,Q4_K_M,Q5_K_S,Q5_K_M,"
    "Q6_K,IQ4_NL,IQ4_XS,IQ3_S,IQ3_M,IQ3_XS,IQ3_XXS,IQ2_XXS,IQ2_XS,IQ2_S,IQ2_M,IQ1_S,IQ1_M,"
    "TQ1_0,TQ2_0"
)
QUIET = ("IDENTICAL", "EQUIVALENT", "QUANT_NOISE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="a scratch folder (files are kept for reuse)")
    parser.add_argument("--types", default=TYPES, help="llama_model_quantize types")
    parser.add_argument("--small", action="store_true", help="the 64-wide test model")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "tiny", ignore_errors=True)
    shape = {} if args.small else {"hidden_size": 256, "intermediate_size": 512}
    tiny = build_tiny(work / "tiny", vocab_size=VOCAB, **shape)
    folder, _ = hf_folder_with_tokenizer(tiny, "qwen2", work)
    results = []
    for outtype in ("f32", "f16", "bf16", "q8_0"):
        source = work / f"conv-{outtype}.gguf"
        if not source.exists():
            convert_hf_to_gguf(folder, source, "qwen2", outtype)
        files = [(outtype, source)]
        for kind in args.types.split(",") if outtype != "q8_0" else ():
            dst = work / f"{outtype}-{kind}.gguf"
            if not dst.exists():
                try:
                    code = llamacpp.model_quantize(source, dst, kind)
                except Exception as exc:  # llama.cpp refuses some types on some shapes
                    print("QFAIL", outtype, kind, type(exc).__name__, str(exc)[-160:])
                    continue
                if code != 0:
                    print("QFAIL", outtype, kind, code)
                    continue
            files.append((f"{outtype}->{kind}", dst))
        for label, path in files:
            with open_model(folder) as a, open_model(path) as b:
                report = diff_models(a, b)
            ok = report.passes(expect_quantized=True)
            tags = collections.Counter(p.tag for p in report.pairs)
            tokenizer_only = (
                not ok
                and bool(report.tokenizer)
                and all(p.tag in QUIET for p in report.pairs)
                and not report.config
            )
            results.append((label, ok, tokenizer_only))
            verdict = "OK  " if ok else ("TOK " if tokenizer_only else "FAIL")
            print(verdict, label, dict(tags), "" if ok else report.diagnosis["line"][:240])
    false_alarms = sum(1 for _, ok, tok in results if not ok and not tok)
    print(
        f"pairs {len(results)} · false alarms {false_alarms} · tokenizer-only "
        f"{sum(1 for _, _, tok in results if tok)}"
    )
    return 1 if false_alarms else 0


if __name__ == "__main__":
    sys.exit(main())
