"""NASH under transformers 4.57 as well as the newest 5.x (which CI's environment has): the
NASH parity grid and the CLI run again in a subprocess whose transformers is 4.57, with
its own huggingface-hub and tokenizers installed into a folder that shadows the
environment's. Slow: it downloads three packages from the registry."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PINS = ["transformers==4.57.6", "huggingface-hub==0.36.2", "tokenizers==0.22.2"]


@pytest.mark.slow
def test_nash_compiles_with_parity_under_transformers_4_57(tmp_path):
    target = tmp_path / "tf457"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *PINS],
                   check=True, timeout=600)
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    version = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert version.stdout.strip() == "4.57.6", version.stderr
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:logging", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_nash.py"), "-k",
                           "parity_with_transformers or different_encoder or cli_init or selected_decoder"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
