"""Quality bounds: what each precision promises about an artifact's logits, and the judge.

fp32 promises parity: the largest logit difference from PyTorch within the family's atol,
and greedy decoding token for token equal (a near-tie excused). int8 cannot promise
either: rounding the weights moves every logit a little, and once one greedy token
differs the continuations part. What it declares instead, as ONNX Runtime's and
CTranslate2's users measure it: teacher-forced top-1 agreement (at every step both
sides see the same prefix), and mean and max absolute logit error against the fp32
PyTorch model. Each family declares its bounds on its exporter (`FamilyExporter.bounds`);
compile's parity check reports every figure, judges them here, and records both in the
manifest. Trained models add a task bound (accuracy within N points of fp32), checked by
the tests and benchmarks that have the task.
"""

from dataclasses import asdict, dataclass, replace
from typing import Any

# fp32 parity is calibrated by the reference's own rounding: the PyTorch model run in float64
# against the same model in float32, on the same cases. The artifact may differ from the
# float32 reference by this multiple of that error (it rounds differently, as much again
# on each side), never by less than the family's declared atol.
CALIBRATION_MULTIPLE = 4.0


@dataclass(frozen=True)
class QualityBounds:
    precision: str
    max_abs_logit_diff: float  # fp32: the family's atol
    mean_abs_logit_diff: float | None = None  # None: not bounded on its own
    min_top1_agreement: float | None = None  # teacher-forced, fraction of steps
    greedy_must_match: bool = True  # greedy tokens equal PyTorch's but at a near-tie
    max_accuracy_drop_points: float | None = None  # trained models: task accuracy vs fp32

    @property
    def atol(self) -> float:
        return self.max_abs_logit_diff

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_bounds(bounds: "QualityBounds | float") -> QualityBounds:
    """A bare float is an fp32 atol (how tests and older callers pass it)."""
    return bounds if isinstance(bounds, QualityBounds) else QualityBounds("fp32", float(bounds))


def calibrated(bounds: QualityBounds, reference_error: float | None) -> QualityBounds:
    """fp32 bounds widened to CALIBRATION_MULTIPLE x the reference's fp64-vs-fp32 error when
    that is larger than the declared atol (an ill-conditioned model); other precisions, and
    reports without a measured reference error, keep their declared bounds."""
    if bounds.precision != "fp32" or reference_error is None or not reference_error == reference_error:
        return bounds
    return replace(bounds, max_abs_logit_diff=max(bounds.max_abs_logit_diff, CALIBRATION_MULTIPLE * reference_error))


def failures(bounds: QualityBounds, max_abs: float, mean_abs: float, top1: float, greedy_ok: bool) -> list[str]:
    """The bounds these figures break, each as a phrase for the error message (empty: passed)."""
    out = []
    if not max_abs <= bounds.max_abs_logit_diff:  # `not <=` so that NaN fails
        out.append(f"max abs logit difference {max_abs:.2e} > {bounds.max_abs_logit_diff:.0e}")
    if bounds.mean_abs_logit_diff is not None and not mean_abs <= bounds.mean_abs_logit_diff:
        out.append(f"mean abs logit difference {mean_abs:.2e} > {bounds.mean_abs_logit_diff:.0e}")
    if bounds.min_top1_agreement is not None and not top1 >= bounds.min_top1_agreement:
        out.append(f"teacher-forced top-1 agreement {top1:.3f} < {bounds.min_top1_agreement}")
    if bounds.greedy_must_match and not greedy_ok:
        out.append("greedy tokens differ from PyTorch's away from a near-tie")
    return out


def judged(bounds: QualityBounds, max_abs: float, mean_abs: float, top1: float, greedy_agreement: float,
           greedy_ok: bool, reference_error: float | None = None) -> dict[str, Any]:
    """The report fields every family's parity check returns (besides its cases and steps):
    the declared bounds, the reference's own fp64-vs-fp32 error, the bound used (`atol`),
    every figure and what it broke."""
    used = calibrated(bounds, reference_error)
    broken = failures(used, max_abs, mean_abs, top1, greedy_ok)
    return {
        "precision": bounds.precision,
        "atol": used.max_abs_logit_diff,
        "declared_atol": bounds.max_abs_logit_diff,
        "reference_fp64_vs_fp32": reference_error,
        "calibration_multiple": CALIBRATION_MULTIPLE if bounds.precision == "fp32" else None,
        "bounds": bounds.as_dict(),
        "max_abs_logit_diff": max_abs,
        "mean_abs_logit_diff": mean_abs,
        "top1_agreement": top1,
        "greedy_token_agreement": greedy_agreement,
        "failures": broken,
        "passed": not broken,
    }


# What int8 weights (passes/quantize_weights.py) may cost any family, measured at compile
# against the fp32 PyTorch model (figures in docs/int8.md). Random-init models have nearly
# flat logits (top-2 margins of a few hundredths), so rounding flips some of their argmaxes:
# top-1 agreement measured 0.78-0.95 on them and 0.94-1.0 on trained ones. Logit errors
# measured up to 0.63 max and 0.037 mean (trained models, whose logits are large).
INT8_BOUNDS = QualityBounds("int8", max_abs_logit_diff=1.5, mean_abs_logit_diff=0.08, min_top1_agreement=0.7,
                            greedy_must_match=False, max_accuracy_drop_points=1.0)
