"""Shared fixtures: checkpoints and compiled artifacts, built once per test session per config."""

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from edgeseq.models.checkpoint import make_config, save_checkpoint
from edgeseq.models.red import RedModel
from edgeseq.models.stagformer import StagFormerModel

from edgeseq.pipeline import compile_checkpoint

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers share two cores: a torch thread pool per worker would oversubscribe them
    # (training runs slow down several-fold), and tracing for export is single-threaded anyway
    torch.set_num_threads(1)

ALL_ON = dict(
    unidirectional_cross_attention=True, causal_encoder=True, share_parameters=True,
    layerwise_coordination=True, consecutive_positions=True,
)
ALL_OFF = {k: False for k in ALL_ON}

# tiny but not degenerate: 2 layers, heads > 1, a vocabulary bigger than the specials
TEST_SIZE = dict(vocab_size=48, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_positions=160)


def red_model(seed: int = 0, **overrides) -> RedModel:
    config = make_config("red", "tiny", {**TEST_SIZE, **overrides})
    torch.manual_seed(seed)
    return RedModel(config).eval()


STAG_TEST_SIZE = dict(vocab_size=48, d_model=32, n_heads=4, d_ff=64, max_positions=160)


def stagformer_model(seed: int = 0, **overrides) -> StagFormerModel:
    config = make_config("stagformer", "tiny", {**STAG_TEST_SIZE, **overrides})
    torch.manual_seed(seed)
    return StagFormerModel(config).eval()


PASTA_TEST_SIZE = dict(d_model=32, n_heads=4, n_layers=2, d_ff=64)


def pasta_model(seed: int = 0, **overrides) -> StagFormerModel:
    """A random-init PASTA model over the task's vocabulary (p = n_stacks, default 1)."""
    config = make_config("pasta", "tiny", {**PASTA_TEST_SIZE, **overrides})
    torch.manual_seed(seed)
    return StagFormerModel(config).eval()


def declared_atol(family: str) -> float:
    """The fp32 logit bound the family's exporter declares (what the tests hold it to)."""
    from edgeseq.families import family as family_record

    return family_record(family).exporter().bounds("fp32").atol


class ArtifactCache:
    """Compile each distinct (family, config, seed, split, precision) once per session; tests share the folders."""

    def __init__(self, root: Path):
        self.root = root

    def get(self, seed: int = 0, verify: bool = True, family: str = "red", split: bool = True, precision: str = "fp32",
            **overrides) -> tuple[Path, Path]:
        key = hashlib.sha1(json.dumps([family, seed, verify, split, sorted(overrides.items())]).encode()).hexdigest()[:10]
        suffix = "" if precision == "fp32" else f"-{precision}"  # one checkpoint, an artifact per precision
        ckpt, art = self.root / f"ckpt-{key}", self.root / f"art-{key}{suffix}"
        # the folder is shared by the run's workers: one builds a config, the others wait for it
        with open(self.root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._build(ckpt, art, family, seed, verify, split, precision, overrides)

    def committed(self, name: str) -> Path:
        """checkpoints/NAME compiled (once per run, like every other config)."""
        art = self.root / f"committed-{name}"
        with open(self.root / f"committed-{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not art.exists():
                compile_checkpoint(Path(__file__).resolve().parent.parent / "checkpoints" / name, art)
        return art

    def _build(self, ckpt: Path, art: Path, family: str, seed: int, verify: bool, split: bool, precision: str,
               overrides: dict) -> tuple[Path, Path]:
        if not ckpt.exists():
            if family == "nash":  # a Hugging Face folder: variant=t5-v1|t5-v1.1|bart, sparsity=S
                from edgeseq.models.nash_checkpoints import (
                    nash_dims,
                    random_masks,
                    random_model,
                    save_hf_checkpoint,
                )

                model = random_model(overrides["variant"], "tiny", seed=seed)
                sparsity = overrides.get("sparsity", 0.0)
                masks = random_masks(nash_dims(model.config), sparsity, seed=seed) if sparsity else None
                save_hf_checkpoint(model, ckpt, masks, force=True)
            else:
                make = {"red": red_model, "stagformer": stagformer_model, "pasta": pasta_model}[family]
                model = make(seed, **overrides)
                save_checkpoint(model, family, ckpt, force=True)
        if not art.exists():
            compile_checkpoint(ckpt, art, verify=verify, split=split, precision=precision)
        return ckpt, art


@pytest.fixture(scope="session", autouse=True)
def close_loaded_models():
    """Every model a test loads and leaves open is closed when the session ends, so no
    scheduler or stage thread outlives the tests."""
    yield
    from edgeseq.runtimes.model import OPEN_MODELS

    for model in list(OPEN_MODELS):
        model.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> ArtifactCache:
    """One cache for the whole run: under xdist every worker's base folder has the run's
    folder as its parent, so a config compiled by one worker is not compiled again by another."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "artifacts-shared"
    root.mkdir(exist_ok=True)
    return ArtifactCache(root)


@pytest.fixture(scope="module", params=[1, 2], ids=["p1", "p2"])
def pasta_compiled(request, artifacts):
    """A compiled random-init PASTA model (p = 1, then p = 2), loaded, and its PyTorch model."""
    from edgeseq.models.checkpoint import load_checkpoint
    from edgeseq.runtimes import load

    checkpoint, artifact = artifacts.get(family="pasta", n_stacks=request.param)
    _, model = load_checkpoint(checkpoint)
    with load(artifact) as runtime:
        yield runtime, model


def wait_until(condition, seconds: float = 30.0) -> None:
    """Poll `condition` until it holds; fail the test after `seconds` (nothing hangs)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def run_without_torch(art: Path) -> subprocess.CompletedProcess:
    """Load and run an artifact in a fresh interpreter where torch, onnx, transformers and
    edgeseq's torch-side packages cannot be imported (what an edge box has)."""
    script = textwrap.dedent(f"""
        import sys
        BLOCKED = ("torch", "onnx", "onnxscript", "onnx_ir", "transformers",
                   "edgeseq.models", "edgeseq.exporters", "edgeseq.passes")
        class Block:
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError(f"blocked import: {{name}}")
        sys.meta_path.insert(0, Block())
        from edgeseq.runtimes import load
        from edgeseq.inspect import inspect_artifact
        m = load({str(art)!r})
        print(m.generate([[5, 6, 7]], max_new_tokens=4, stop_tokens=[]).tokens)
        inspect_artifact({str(art)!r})
        assert not any(k == "torch" or k.startswith("torch.") for k in sys.modules)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
