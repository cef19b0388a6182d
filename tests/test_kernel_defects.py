"""Each kernel parity falsifier turns red on a planted, realistic bug, with its bound unchanged.

A planted bug is a mutant of the kernel's own module: its source with one textual edit (each
edit must match exactly once, so a test breaks loudly if the kernel is rewritten), imported
from a temporary file (triton.jit needs real source) and monkeypatched in place of the real
kernel. The same case then runs through the falsifier's check twice: the real kernel passes,
the mutant fails, and the bound (m x eager's error + eps) is the same number both times: the
bug is caught by the kernel's error, not by a tolerance that moved. The cases lie inside the
falsifiers' hypothesis domains, and each planted bug stays inside its buffers (an
out-of-bounds read in the interpreter would be a different, nondeterministic test).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest

from falsifiers import kernel_cases as kc
from falsifiers.kernel_mutants import plant
from provable_kernels import ParityResult

# the package root re-exports functions named like their modules, so fetch the modules
attention_mod, cross_entropy_mod, dequant_mod, linear_mod, rms_norm_mod, rope_mod, swiglu_mod = (
    importlib.import_module(f"provable_kernels.{name}")
    for name in ("attention", "cross_entropy", "dequant", "linear", "rms_norm", "rope", "swiglu")
)


def red_with_same_bound(
    check: Callable[[], ParityResult], planting: Callable[[], None]
) -> ParityResult:
    good = check()
    assert good.passed, f"the real kernel must pass this case: {good}"
    planting()
    bad = check()
    assert not bad.passed, f"the planted bug went unnoticed: {bad}"
    assert bad.bound == good.bound and bad.multiplier == good.multiplier
    return bad


# (module, kernel, edits, check): one realistic bug per entry
DEFECTS = {
    "rms_norm: eps outside the square root": (
        rms_norm_mod,
        "_rms_norm_kernel",
        [("1.0 / tl.sqrt(mean_sq + eps)", "1.0 / (tl.sqrt(mean_sq) + eps)")],
        lambda: kc.rms_norm_case(5, 96, "float32", -3.0, 1e-5, 11),
    ),
    "rms_norm: NaN scrubbed to zero (placement)": (
        rms_norm_mod,
        "_rms_norm_kernel",
        [
            (
                "    x = x.to(tl.float32)\n",
                "    x = x.to(tl.float32)\n    x = tl.where(x == x, x, 0.0)\n",
            )
        ],
        lambda: kc.rms_norm_case(4, 64, "bfloat16", 0.0, 1e-6, 23, poison=True),
    ),
    "rope: the wrong half rotated": (
        rope_mod,
        "_rope_kernel",
        [
            ("x1 * cos1 - x2 * sin1", "x1 * cos1 + x2 * sin1"),
            ("x2 * cos2 + x1 * sin2", "x2 * cos2 - x1 * sin2"),
        ],
        lambda: kc.rope_case(1, 3, 9, 12, "float32", False, 5, 12),
    ),
    "swiglu: sigmoid of the wrong sign": (
        swiglu_mod,
        "_swiglu_kernel",
        [("g / (1.0 + tl.exp(-g)) * u", "g / (1.0 + tl.exp(g)) * u")],
        lambda: kc.swiglu_case(3, 333, "float16", 0.0, 14),
    ),
    "linear: the K tail block dropped": (
        linear_mod,
        "_linear_kernel",
        [("for k0 in range(0, K, BLOCK_K):", "for k0 in range(0, K - BLOCK_K + 1, BLOCK_K):")],
        lambda: kc.linear_case(7, 200, 33, True, "float32", 15),
    ),
    "attention: kv head h % Hkv instead of h // group": (
        attention_mod,
        "_attention_kernel",
        [("kv_h = h // group", "kv_h = h % (n_q_heads // group)")],
        lambda: kc.attention_case(1, 2, 2, 9, 0, 24, "float32", 0.0, 16),
    ),
    "attention: causal mask at relative positions (decode offset lost)": (
        attention_mod,
        "_attention_kernel",
        [("position = Tk - Tq + rm", "position = rm")],
        lambda: kc.attention_case(1, 1, 3, 5, 17, 64, "bfloat16", 0.0, 17),
    ),
    "cross_entropy: the tail chunk unmasked in the log-sum-exp": (
        cross_entropy_mod,
        "_cross_entropy_kernel",
        [('x = tl.where(mask, x.to(tl.float32), float("-inf"))', "x = x.to(tl.float32)")],
        lambda: kc.cross_entropy_case(3, 4097, "float32", 0.0, 18)[0],
    ),
    "cross_entropy: the max not subtracted": (
        cross_entropy_mod,
        "_cross_entropy_kernel",
        [
            ('m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)', "m_safe = m_new * 0.0"),
            (
                "(m - picked.to(tl.float32)) + tl.log(s)",
                "(0.0 - picked.to(tl.float32)) + tl.log(s)",
            ),
            (
                "tl.exp(x.to(tl.float32) - m[:, None]) / s[:, None]",
                "tl.exp(x.to(tl.float32)) / s[:, None]",
            ),
        ],
        lambda: kc.cross_entropy_case(4, 1000, "float32", 2.5, 19)[0],
    ),
    "cross_entropy: gradient chunk read at an off-by-one offset": (
        cross_entropy_mod,
        "_cross_entropy_kernel",
        [
            (
                "x = tl.load(logits_ptr + rows[:, None] * stride_l + c[None, :], mask=mask, "
                "other=0.0)\n        # exp",
                "x = tl.load(logits_ptr + rows[:, None] * stride_l + c[None, :] + 1, "
                "mask=mask & (c[None, :] + 1 < vocab), other=0.0)\n        # exp",
            )
        ],
        lambda: kc.cross_entropy_case(2, 5000, "bfloat16", 0.5, 20)[1],
    ),
    "dequant matvec: x read at the in-block index (wrong stride)": (
        dequant_mod,
        "_matvec_kernel",
        [("x = tl.load(x_ptr + cols, mask", "x = tl.load(x_ptr + cols % VALUES, mask")],
        lambda: kc.matvec_case("q4_k", 6, 3, 0.0, 21),
    ),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_planted_bug_turns_the_falsifier_red(defect, monkeypatch, tmp_path):
    module, kernel, edits, check = DEFECTS[defect]
    bad = red_with_same_bound(check, lambda: plant(monkeypatch, tmp_path, module, kernel, *edits))
    assert "the bound that would have passed" in str(bad) or bad.placement is not None


DEQUANT_DEFECTS = {
    "q8_0: block stride 32 instead of 34": (
        "q8_0",
        [("base = raw_ptr + blocks * 34", "base = raw_ptr + blocks * 32")],
    ),
    "q4_k: low and high nibbles swapped": ("q4_k", [("(sub % 2) * 4", "(1 - sub % 2) * 4")]),
    "q4_k: sub-blocks 4-7 read 2 high scale bits from the wrong byte": (
        "q4_k",
        [
            (
                "b = tl.load(scales + tl.where(low, sub + 4, sub - 4))",
                "b = tl.load(scales + tl.where(low, sub + 4, sub))",
            )
        ],
    ),
}


@pytest.mark.parametrize("defect", list(DEQUANT_DEFECTS))
def test_planted_dequant_bug_breaks_bit_exactness(defect, monkeypatch, tmp_path):
    kind, edits = DEQUANT_DEFECTS[defect]
    case = (kind, 3, 4, 0.0, 22)
    assert kc.dequant_mismatches(*case) == 0
    plant(monkeypatch, tmp_path, dequant_mod, "_dequant_kernel", *edits)
    assert kc.dequant_mismatches(*case) > 0


def test_failure_line_names_the_bound_that_would_have_passed():
    result = ParityResult("k", kc.DTYPES["bfloat16"], 7, 3e-2, 1e-3, 3.0, 1e-4)
    line = str(result)
    assert not result.passed
    assert "seed 7" in line and "bound that would have passed: 3.000e-02" in line
    assert "m = 29.9" in line


def test_a_planted_kernel_bug_turns_backend_parity_red(monkeypatch, tmp_path, tiny_factory):
    """The whole-model falsifier sees a kernel bug too (rope's wrong half inside the forward)."""
    from falsifiers.test_cpu_cuda_forward_parity_v1 import forward_parity

    tiny = tiny_factory("qwen2", tied=False)
    good_logits, _ = forward_parity(tiny, "float32", "default", 5)
    assert good_logits.passed, str(good_logits)
    plant(
        monkeypatch,
        tmp_path,
        rope_mod,
        "_rope_kernel",
        ("x1 * cos1 - x2 * sin1", "x1 * cos1 + x2 * sin1"),
        ("x2 * cos2 + x1 * sin2", "x2 * cos2 - x1 * sin2"),
    )
    bad_logits, _ = forward_parity(tiny, "float32", "default", 5)
    assert not bad_logits.passed and bad_logits.bound == good_logits.bound
