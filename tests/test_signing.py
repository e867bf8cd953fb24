"""Signed artifacts (OpenSSF model-signing, offline EC keys): sign, verify and load; every
kind of tampering refused at `load(trusted_key=...)` with the file named; the CLI's sign,
verify, generate --trusted-key and compile --sign-key. The artifact is a copy of the tiny
NASH fixture (or a fresh compile), keys are made here."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from edgeseq.runtimes import load
from edgeseq.runtimes.signature import SIGNATURE_FILE, sign_artifact, verify_artifact

from edgeseq.errors import LoadError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nash-t5-tiny"


def write_key(folder: Path, name: str, key) -> tuple[Path, Path]:
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("keys")
    return {"ours": write_key(folder, "ours", ec.generate_private_key(ec.SECP256R1())),
            "theirs": write_key(folder, "theirs", ec.generate_private_key(ec.SECP384R1())),
            "ed25519": write_key(folder, "ed", ed25519.Ed25519PrivateKey.generate())}


@pytest.fixture
def signed(tmp_path, keys) -> Path:
    art = tmp_path / "art"
    shutil.copytree(FIXTURE, art)
    sign_artifact(art, keys["ours"][0])
    return art


def test_a_signed_artifact_verifies_and_loads_with_the_same_tokens(signed, keys):
    from edgeseq.inspect import inspect_artifact

    assert inspect_artifact(signed)["signed"] and not inspect_artifact(FIXTURE)["signed"]
    verify_artifact(signed, keys["ours"][1])
    with load(signed, trusted_key=keys["ours"][1]) as model, load(FIXTURE) as plain:
        assert model.generate([[5, 6, 7]], 6, []).tokens == plain.generate([[5, 6, 7]], 6, []).tokens


def _flip_weight_byte(art: Path) -> None:
    weights = art / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))


def _edit_manifest(art: Path) -> None:
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["model_config"]["eos_token_id"] = 3  # a field the checksums do not cover
    (art / "manifest.json").write_text(json.dumps(manifest))


TAMPERING = {
    "a changed weight byte": (_flip_weight_byte, "weights.bin changed"),
    "a changed manifest field": (_edit_manifest, "manifest.json changed"),
    "an added file": (lambda art: (art / "extra.onnx").write_bytes(b"\0"), "extra.onnx added"),
    "an added dot file": (lambda art: (art / ".gitattributes").write_text("*"), ".gitattributes added"),
    "a removed file": (lambda art: (art / "tokenizer.json").unlink(), "tokenizer.json removed"),
    "no signature": (lambda art: (art / SIGNATURE_FILE).unlink(), "is not signed"),
    "a damaged signature": (lambda art: (art / SIGNATURE_FILE).write_text("{not json"), "cannot be read"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_refused_at_load_with_the_file_named(signed, keys, case):
    tamper, message = TAMPERING[case]
    tamper(signed)
    with pytest.raises(LoadError, match=message) as caught:
        load(signed, trusted_key=keys["ours"][1])
    assert caught.value.fix
    if case != "a removed file":
        with load(signed, verify=False):  # without --trusted-key nothing changes (checksums aside)
            pass


def test_a_signature_by_another_key_is_refused(signed, keys):
    with pytest.raises(LoadError, match="is not by the trusted key"):
        load(signed, trusted_key=keys["theirs"][1])
    sign_artifact(signed, keys["theirs"][0])  # re-signed by them: now theirs verifies, ours does not
    verify_artifact(signed, keys["theirs"][1])
    with pytest.raises(LoadError, match="is not by the trusted key"):
        verify_artifact(signed, keys["ours"][1])


def test_bad_keys_are_one_line_errors(tmp_path, keys):
    art = tmp_path / "art"
    shutil.copytree(FIXTURE, art)
    with pytest.raises(LoadError, match="not an elliptic-curve private key"):
        sign_artifact(art, keys["ed25519"][0])
    with pytest.raises(LoadError, match="private key .* is not a file"):
        sign_artifact(art, tmp_path / "none.pem")
    with pytest.raises(LoadError, match="not an artifact folder"):
        sign_artifact(tmp_path, keys["ours"][0])
    assert not (art / SIGNATURE_FILE).exists() and not list(art.glob("*.partial"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseq.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_sign_verify_and_generate_with_a_trusted_key(tmp_path, keys):
    art = tmp_path / "art"
    shutil.copytree(FIXTURE, art)
    private, public = keys["ours"]
    r = cli("generate", str(art), "--input-ids", "5 6 7", "--max-new-tokens", "4", "--trusted-key", str(public))
    assert r.returncode == 1 and "is not signed" in r.stderr and "edgeseq sign" in r.stderr, r.stderr
    assert cli("sign", str(art), "--key", str(private)).returncode == 0
    r = cli("verify", str(art), "--trusted-key", str(public))
    assert r.returncode == 0 and "verified" in r.stdout, r.stderr
    r = cli("generate", str(art), "--input-ids", "5 6 7", "--max-new-tokens", "4", "--stop-token", "-1", "--json",
            "--trusted-key", str(public))
    assert r.returncode == 0, r.stderr
    with load(FIXTURE) as model:
        assert json.loads(r.stdout)["tokens"] == model.generate([[5, 6, 7]], 4, []).tokens
    _edit_manifest(art)
    r = cli("verify", str(art), "--trusted-key", str(public))
    assert r.returncode == 1 and "manifest.json changed" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_compile_sign_key_signs_before_the_folder_appears(tmp_path, keys, artifacts):
    """Slow: a whole compile (about a minute here)."""
    ckpt, _ = artifacts.get(family="red")
    out = tmp_path / "signed-red"
    r = cli("compile", str(ckpt), "-o", str(out), "--no-verify", "--sign-key", str(keys["ours"][0]))
    assert r.returncode == 0, r.stderr
    verify_artifact(out, keys["ours"][1])


def test_compile_refuses_a_missing_sign_key_before_exporting(tmp_path, artifacts):
    from edgeseq.errors import BuildError
    from edgeseq.pipeline import compile_checkpoint

    with pytest.raises(BuildError, match="--sign-key .* is not a file"):
        compile_checkpoint(tmp_path / "no-checkpoint-needed", tmp_path / "other", sign_key=tmp_path / "none.pem")
    assert not (tmp_path / "other").exists()


def test_serve_with_a_trusted_key_refuses_a_changed_artifact(signed, keys):
    _flip_weight_byte(signed)
    r = cli("serve", str(signed), "--port", "1", "--trusted-key", str(keys["ours"][1]))
    assert r.returncode == 1 and "weights.bin changed" in r.stderr and "Traceback" not in r.stderr
