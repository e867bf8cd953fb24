"""What the CPU a model runs on can do, as the OS reports it, and the kernel choices that follow.

Machines of this project's kind differ: some x86 CPUs have AVX2 only, others AVX-512 with
VNNI and BF16. Choices are made from features detected here at run time, never from the
machine a model was compiled on:

- int8 weight bits. ONNX Runtime's u8 x s8 MatMul kernel without a dot-product instruction
  (AVX2 alone) sums pairs of u8 x s8 products in int16: 255 * 127 * 2 overflows it (an
  all-ones MatMul came out at half its value on such a CPU), 255 * 63 * 2 does not. With
  AVX-512 VNNI, AVX-VNNI or the ARM dot product the sums are int32 and full 8-bit weights
  are exact. So artifacts store 8-bit weights, and a CPU without one of those features
  gets them requantized to 7 bits once, at load (runtimes/ort_backend.py).
- half precision. fp16 would need AVX-512 FP16 and bf16 AVX-512 BF16 or AMX; the features
  are reported, but ONNX Runtime's CPU provider has no fp16 or bf16 MatMul that beats
  fp32 (its MLAS kernels convert halves to floats), so compile refuses both either way.

Features come from /proc/cpuinfo (Linux: x86 `flags`, ARM `Features`), else from numpy's
own runtime dispatch table. `EDGESEQ_INT8_WEIGHT_BITS=7` (or 8) forces the int8 choice,
for tests and for a CPU the detection gets wrong.
"""

import functools
import os
import platform
from pathlib import Path

# a dot-product instruction that keeps u8 x s8 sums in int32, by the OS's name for it
INT8_DOT_PRODUCT = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "asimddp": "ARM dot product"}
HALF_PRECISION = {"avx512_fp16": "AVX-512 FP16", "avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX BF16"}
SHOWN = ("avx2", "avx512f", "avx512bw", *INT8_DOT_PRODUCT, *HALF_PRECISION, "amx_tile", "neon", "asimd")
FORCE_BITS = "EDGESEQ_INT8_WEIGHT_BITS"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, lower case, by the Linux kernel's names."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                return frozenset(value.lower().split())
    except OSError:
        pass
    try:  # numpy's dispatch table: other operating systems
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    names = {"AVX512_VNNI": "avx512_vnni", "AVX512VNNI": "avx512_vnni", "AVX2": "avx2", "AVX512F": "avx512f",
             "ASIMDDP": "asimddp", "AVX512_FP16": "avx512_fp16", "AVX512_BF16": "avx512_bf16"}
    return frozenset(ours for theirs, ours in names.items() if __cpu_features__.get(theirs))


def int8_dot_product(flags: frozenset[str] | None = None) -> str | None:
    """The feature that makes full 8-bit weights exact in ONNX Runtime's int8 MatMul, or None."""
    flags = cpu_flags() if flags is None else flags
    return next((name for flag, name in INT8_DOT_PRODUCT.items() if flag in flags), None)


def int8_weight_bits(flags: frozenset[str] | None = None) -> tuple[int, str]:
    """(bits, why): 8 where a dot-product instruction keeps the kernel exact, else 7."""
    forced = os.environ.get(FORCE_BITS)
    if forced in ("7", "8"):
        return int(forced), f"forced by {FORCE_BITS}={forced}"
    feature = int8_dot_product(flags)
    if feature:
        return 8, f"{feature} sums u8 x s8 products in int32"
    return 7, "no AVX-512 VNNI, AVX-VNNI or ARM dot product: the u8 x s8 kernel sums pairs in int16"


def int8_weight_choice(manifest: dict) -> dict | None:
    """For an int8 artifact: the bits of its stored weights, the bits they run at on this
    CPU, and why; None for other precisions. An artifact from before 8-bit storage holds
    7-bit weights, which every CPU runs as they are."""
    if manifest.get("precision") != "int8":
        return None
    stored = int((manifest.get("int8_weights") or {}).get("stored_bits", 7))
    bits, why = int8_weight_bits()
    if stored == 7:
        bits, why = 7, "the artifact stores 7-bit weights (compiled before 8-bit storage)"
    return {"stored_bits": stored, "bits": bits, "why": why}


def half_precision_note(precision: str) -> str:
    """Why fp16/bf16 are refused on this CPU, naming the feature they would need and whether it is here."""
    flags = cpu_flags()
    need = {"fp16": ("avx512_fp16",), "bf16": ("avx512_bf16", "amx_bf16")}.get(precision, ())
    have = [HALF_PRECISION[f] for f in need if f in flags]
    wanted = " or ".join(HALF_PRECISION[f] for f in need) or "a half-precision unit"
    where = f"this CPU has {', '.join(have)}" if have else f"this CPU has no {wanted}"
    return (f"{precision} would need {wanted} ({where}), and ONNX Runtime's CPU provider has no {precision} "
            "MatMul faster than fp32 either way")


def describe() -> dict:
    """What `inspect` and bench JSON record: the CPU, the features that matter, the int8 choice."""
    flags = cpu_flags()
    bits, why = int8_weight_bits(flags)
    return {"machine": platform.machine(), "processor": _model_name(), "features": [f for f in SHOWN if f in flags],
            "int8_weight_bits": bits, "int8_weight_bits_why": why}


def _model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
