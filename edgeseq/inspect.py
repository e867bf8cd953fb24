"""`edgeseq inspect`: what an artifact holds, read from its manifest (torch-free, onnx-free)."""

from pathlib import Path
from typing import Any

from edgeseq.graph_spec import PREFIX_BLOCK
from edgeseq.runtimes.artifact import read_artifact
from edgeseq.runtimes.cpu_features import describe as describe_cpu
from edgeseq.runtimes.cpu_features import int8_weight_choice
from edgeseq.runtimes.prefix_cache import DEFAULT_PREFIX_CACHE_MB, unsupported_reason
from edgeseq.runtimes.signature import SIGNATURE_FILE


def roofline(weight_bytes_per_token: int, bandwidth_gb_s: float | None = None) -> dict[str, Any]:
    """At batch 1 a decode step reads every weight once: tokens/s can never exceed the
    bandwidth those bytes are read at / weight bytes per token. The bandwidth is measured
    here at that working set's size (edgeseq/working_set.py: the last-level cache's where
    the weights fit, memory's where they do not) unless given."""
    from edgeseq.working_set import memory_level, read_bandwidth_gb_s

    if bandwidth_gb_s is None:
        bandwidth_gb_s = read_bandwidth_gb_s(weight_bytes_per_token, repeats=3)
    return {"bandwidth_gb_s": bandwidth_gb_s, "weight_bytes_per_token": weight_bytes_per_token,
            "memory_level": memory_level(weight_bytes_per_token), "tok_s_b1": bandwidth_gb_s * 1e9 / weight_bytes_per_token}


def prefix_cache_support(manifest: dict[str, Any]) -> dict[str, Any]:
    """Whether the artifact's prompts can share cached prefix blocks (runtimes/prefix_cache.py), and why not."""
    reason = unsupported_reason(manifest)
    if reason is None:
        return {"supported": True, "block_tokens": manifest["decode"].get("prefix_block", PREFIX_BLOCK),
                "default_mb": DEFAULT_PREFIX_CACHE_MB}
    return {"supported": False, "reason": reason}


def inspect_artifact(path: str | Path, verify: bool = True, bandwidth_gb_s: float | None = None) -> dict[str, Any]:
    artifact = read_artifact(path, verify=verify)
    m = artifact.manifest
    files = m["files"]
    graphs = {
        name: {
            "role": g["role"],
            "file": g["file"],
            "file_bytes": files[g["file"]]["bytes"],
            "inputs": g["inputs"],
            "outputs": g["outputs"],
            "weights": len(g.get("initializers", {})),
            "weight_bytes": m["stats"]["weight_bytes_per_graph"].get(name, 0),
        }
        for name, g in m["graphs"].items()
    }
    parity = m.get("parity") or {}
    return {
        "path": str(artifact.path),
        "family": m["family"],
        "format_version": m["format_version"],
        "edgeseq_version": m.get("edgeseq_version"),
        "target": m["target"],
        "precision": m["precision"],
        "model_config": m["model_config"],
        "graphs": graphs,
        "schedule": m.get("schedule", []),
        "stats": m["stats"],
        "roofline": roofline(m["stats"]["weight_bytes_per_token"], bandwidth_gb_s),  # at the artifact's precision
        "files": {name: f["bytes"] for name, f in files.items()},
        # whether an `edgeseq sign` signature is present (checked only by verify / --trusted-key)
        "signed": (artifact.path / SIGNATURE_FILE).is_file(),
        "prefix_cache": prefix_cache_support(m),
        "cpu": describe_cpu(),  # the features that decide kernels, read here at run time
        "int8_weights": int8_weight_choice(m),  # int8 artifacts: stored bits and the bits this CPU gets
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "tokenizer": m.get("tokenizer"),  # {"file", "vocab_size"} when text works, else None
        "pruning": m.get("pruning"),
        "generation": m.get("generation"),  # the default decoding, from the checkpoint's generation config
        "passes": m.get("passes"),
        "pasta": {k: v for k, v in m.get("pasta", {}).items() if k != "bench_prompts"} or None,  # NASH: kept units, parameters and FLOPs before/after stripping
        "parity": {k: parity[k] for k in ("precision", "max_abs_logit_diff", "mean_abs_logit_diff", "top1_agreement",
                                           "greedy_token_agreement", "atol", "bounds", "passed") if k in parity}
        or None,
    }
