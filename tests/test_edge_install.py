"""The edge install: `pip install edgeseq` (no extras) into a fresh venv brings no torch, and
`edgeseq generate` and `inspect` run a committed artifact there with the same tokens as
here. `edgeseq compile` there answers with the install line of the compile extra.

The fixture is tests/fixtures/nash-t5-tiny (scripts/make_fixtures.sh regenerates it).
Needs the package registry (numpy, onnxruntime, click, rich, tokenizers); pip's cache
makes a second run quick.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from edgeseq.runtimes import load

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "nash-t5-tiny"


def site_packages_mb(venv: Path) -> float:
    """What the install added: site-packages without the venv's own pip."""
    (site,) = venv.glob("lib/python*/site-packages")
    return sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.relative_to(site).parts[0].startswith("pip")) / 1e6


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("edge") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              str(REPO)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def edge(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "edgeseq"), *args], capture_output=True, text=True, timeout=120)


def test_runtime_installs_and_runs_without_torch(edge_venv):
    python = str(edge_venv / "bin" / "python")
    absent = subprocess.run([python, "-c", "import importlib.util as u; print([m for m in ('torch', 'onnx', "
                             "'onnxscript', 'transformers') if u.find_spec(m)])"], capture_output=True, text=True)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    with load(FIXTURE) as model:
        expected = model.generate([[5, 17, 3], [9]], max_new_tokens=6, stop_tokens=[]).tokens
        text_ids = model.encode_text("the cat sat")
        expected_text = model.generate([text_ids], max_new_tokens=6).tokens[0]
    r = edge(edge_venv, "generate", str(FIXTURE), "--input-ids", "5 17 3", "--input-ids", "9",
             "--max-new-tokens", "6", "--stop-token", "-1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tokens"] == expected
    r = edge(edge_venv, "generate", str(FIXTURE), "--text", "the cat sat", "--max-new-tokens", "6", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tokens"] == [expected_text]
    r = edge(edge_venv, "inspect", str(FIXTURE), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["family"] == "nash", r.stderr
    r = edge(edge_venv, "compile", str(FIXTURE), "-o", str(edge_venv.parent / "out"))
    assert r.returncode == 1 and "needs the compile extra" in r.stderr and "edgeseq[compile]" in r.stderr, r.stderr
    size = site_packages_mb(edge_venv)
    print(f"\nedge install: {size:.0f} MB in site-packages")
    assert size < 300  # onnxruntime, numpy, tokenizers (+ huggingface_hub), click, rich; torch's CPU wheel alone is ~700 MB


def test_the_sign_extra_verifies_without_torch(edge_venv, tmp_path):
    """Runs after the size check above (same module, in order): the sign extra on the edge install."""
    import shutil

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from edgeseq.runtimes.signature import sign_artifact

    install = subprocess.run([str(edge_venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              f"{REPO}[sign]"], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (tmp_path / "key.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    art = tmp_path / "art"
    shutil.copytree(FIXTURE, art)
    sign_artifact(art, tmp_path / "key.pem")
    r = edge(edge_venv, "verify", str(art), "--trusted-key", str(tmp_path / "key.pub"))
    assert r.returncode == 0 and "verified" in r.stdout, r.stderr
    r = edge(edge_venv, "generate", str(art), "--input-ids", "5 17 3", "--max-new-tokens", "4", "--json",
             "--trusted-key", str(tmp_path / "key.pub"))
    assert r.returncode == 0, r.stderr
    absent = subprocess.run([str(edge_venv / "bin" / "python"), "-c", "import importlib.util as u; print([m for m in "
                             "('torch', 'onnx', 'transformers') if u.find_spec(m)])"], capture_output=True, text=True)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    (art / "extra.txt").write_text("x")
    r = edge(edge_venv, "verify", str(art), "--trusted-key", str(tmp_path / "key.pub"))
    assert r.returncode == 1 and "extra.txt added" in r.stderr
