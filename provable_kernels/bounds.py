"""The earned-bound parity check: a kernel may be as inexact as torch eager, not more.

A fixed atol either flakes as magnitudes grow or gets widened until green. Instead the
tolerance is earned per case: torch eager, run in the kernel's dtype, is held against the
same float64 reference, and the kernel's RMSE may be at most ``m`` times eager's (m = 2;
3 for bfloat16, as in torch's own accuracy checker) plus ε, the dtype's machine epsilon at the
reference's RMS scale: one unit in the last place, so that a scalar (a mean loss) on which
eager's rounding happened to land nearer the truth does not demand more than one-ulp
agreement. (torch's checker uses an absolute 1e-5 here; ours scales with the values.)
NaN/Inf placement is checked first, against the float64 reference rounded to the dtype: a
kernel that overflows where the true value does not, or hides an overflow, is wrong whatever
its RMSE over the finite entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MULTIPLIER = {torch.bfloat16: 3.0}
DEFAULT_MULTIPLIER = 2.0
EPSILON_SHARE = 1.0


class ParityError(AssertionError):
    """A kernel disagreed with its float64 reference by more than its earned bound."""


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference over the entries finite in both, in float64."""
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    finite = torch.isfinite(a64) & torch.isfinite(b64)
    if not bool(finite.any()):
        return 0.0
    return float(((a64 - b64)[finite] ** 2).mean().sqrt())


def placement_mismatch(out: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype) -> str | None:
    """Where ``out`` has NaN/±Inf and the reference rounded to ``dtype`` does not (or back)."""
    out = out.detach().cpu()
    expected = ref64.detach().cpu().to(dtype)
    for name, test in (
        ("NaN", torch.isnan),
        ("+Inf", torch.isposinf),
        ("-Inf", torch.isneginf),
    ):
        got, want = test(out), test(expected)
        if not torch.equal(got, want):
            wrong = (got != want).nonzero()
            first = tuple(int(i) for i in wrong[0])
            return (
                f"{name} placement differs at {len(wrong)} entries, first at {first} "
                f"(kernel {float(out[first])}, reference {float(expected[first])})"
            )
    return None


@dataclass(frozen=True)
class ParityResult:
    """One case's measurement; ``str()`` is the line a failure prints."""

    name: str
    dtype: torch.dtype
    seed: int
    kernel_rmse: float
    eager_rmse: float
    multiplier: float
    epsilon: float
    placement: str | None = None

    @property
    def bound(self) -> float:
        return self.multiplier * self.eager_rmse + self.epsilon

    @property
    def passed(self) -> bool:
        return self.placement is None and self.kernel_rmse <= self.bound

    @property
    def ratio(self) -> float:
        """Kernel RMSE as a share of its bound (≤ 1 passes; 0 when there was no error at all,
        as when every output is NaN in both)."""
        if self.kernel_rmse == 0.0:
            return 0.0
        return self.kernel_rmse / self.bound if self.bound > 0 else float("inf")

    @property
    def multiplier_needed(self) -> float:
        """The m that would have passed with the same ε (inf when eager was exact)."""
        if self.kernel_rmse <= self.epsilon:
            return 0.0
        if self.eager_rmse == 0.0:
            return float("inf")
        return (self.kernel_rmse - self.epsilon) / self.eager_rmse

    def __str__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        head = f"{self.name} [{dtype}, seed {self.seed}]"
        if self.placement is not None:
            return f"{head}: {self.placement}"
        verdict = "within" if self.passed else "OVER"
        line = (
            f"{head}: RMSE(kernel, ref64) {self.kernel_rmse:.3e} {verdict} bound "
            f"{self.bound:.3e} = {self.multiplier:g} x RMSE(eager, ref64) {self.eager_rmse:.3e}"
            f" + eps {self.epsilon:.3e}"
        )
        if not self.passed:
            line += (
                f"; the bound that would have passed: {self.kernel_rmse:.3e} "
                f"(m = {self.multiplier_needed:.3g})"
            )
        return line


def check_parity(
    name: str,
    kernel_out: torch.Tensor,
    eager_out: torch.Tensor,
    ref64: torch.Tensor,
    dtype: torch.dtype,
    seed: int,
) -> ParityResult:
    """Measure one case: NaN/Inf placement first, then RMSE against the earned bound."""
    if kernel_out.shape != ref64.shape:
        raise ParityError(f"{name}: kernel shape {tuple(kernel_out.shape)} != {tuple(ref64.shape)}")
    finite_ref = ref64.detach().double().cpu()
    finite_ref = finite_ref[torch.isfinite(finite_ref)]
    scale = float(finite_ref.pow(2).mean().sqrt()) if finite_ref.numel() else 0.0
    return ParityResult(
        name=name,
        dtype=dtype,
        seed=seed,
        kernel_rmse=rmse(kernel_out, ref64),
        eager_rmse=rmse(eager_out, ref64),
        multiplier=MULTIPLIER.get(dtype, DEFAULT_MULTIPLIER),
        epsilon=EPSILON_SHARE * torch.finfo(dtype).eps * scale,
        placement=placement_mismatch(kernel_out, ref64, dtype),
    )


def assert_parity(result: ParityResult) -> ParityResult:
    """Raise ParityError with the result's line (bound that would have passed) on failure."""
    if not result.passed:
        raise ParityError(str(result))
    return result
