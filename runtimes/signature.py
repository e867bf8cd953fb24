"""Signed artifacts: the whole folder, manifest included, signed by the OpenSSF
`model-signing` library's key-based signing, which is offline (no Sigstore, no network).

The key is an elliptic-curve key in PEM (P-256, P-384 or P-521; `openssl ecparam -name
prime256v1 -genkey -noout -out key.pem` and `openssl ec -in key.pem -pubout -out key.pub`).
The signature is a Sigstore bundle at OUT/model.sig over a manifest of every file's SHA-256
(the signature file itself excepted; no file is exempt, dot files included), so a changed
byte, an added file and a removed one all fail verification, each named. `verify_artifact`
runs before `load` reads anything when the caller passes a trusted key; without one
nothing changes. Needs the `sign` extra (model-signing; no torch).
"""

import re
from pathlib import Path

from edgeseq.errors import LoadError

SIGNATURE_FILE = "model.sig"
EXTRA = "pip install 'edgeseq[sign]'"


def _library():
    try:
        import model_signing
    except ImportError as e:
        raise LoadError(f"signing and verifying artifacts needs the model-signing library ({e})", EXTRA) from None
    return model_signing


def _hashing(model_signing):
    # the signature is not part of what it signs; git's dot files are (model-signing skips them by default)
    return model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


def _key_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"{what} {path} is not a file", f"pass the PEM file of the {what}")
    return path


def sign_artifact(artifact: str | Path, private_key: str | Path, password: str | None = None) -> Path:
    """Write ARTIFACT/model.sig over every file of the folder; returns its path."""
    model_signing = _library()
    folder = Path(artifact)
    if not (folder / "manifest.json").is_file():
        raise LoadError(f"{folder} is not an artifact folder (no manifest.json)", "pass the -o folder of `edgeseq compile`")
    key = _key_file(private_key, "private key")
    config = model_signing.signing.Config().set_hashing_config(_hashing(model_signing))
    try:
        config.use_elliptic_key_signer(private_key=key, password=password)
    except Exception as e:  # cryptography's and model-signing's own (an Ed25519 key: AttributeError)
        raise LoadError(f"{key} is not an elliptic-curve private key model-signing can use ({e})",
                        "make one with `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`") from None
    signature = folder / SIGNATURE_FILE
    partial = signature.with_name(SIGNATURE_FILE + ".partial")
    config.sign(folder, partial)
    partial.replace(signature)  # a reader never sees half a signature
    return signature


def _what_differs(message: str) -> str:
    """model-signing's mismatch report (the repr of a list of lines), as the files it names."""
    quote = r"\\*'"  # a quote, escaped or not (the lines are reprs inside a repr)
    names = r"([^\"\]\\]+)"
    parts = [f"{name} changed" for name in re.findall(rf"Hash mismatch for {quote}([^'\\]+)", message)]
    parts += [f"{n.strip()} added" for n in re.findall(rf"Extra files found in model {quote}[^']*{quote}: {names}", message)]
    parts += [f"{n.strip()} removed" for n in re.findall(rf"Missing files in model {quote}[^']*{quote}: {names}", message)]
    return "; ".join(parts) or message


def verify_artifact(artifact: str | Path, trusted_key: str | Path) -> None:
    """Raise a LoadError naming the problem unless ARTIFACT is signed by `trusted_key` (a PEM
    public key) and no file has changed, been added or been removed since."""
    model_signing = _library()
    folder = Path(artifact)
    key = _key_file(trusted_key, "trusted key")
    signature = folder / SIGNATURE_FILE
    if not signature.is_file():
        raise LoadError(f"artifact {folder} is not signed (no {SIGNATURE_FILE}) and a trusted key was given",
                        f"sign it with `edgeseq sign {folder} --key PRIVATE.pem`, or load it without --trusted-key")
    config = model_signing.verifying.Config().set_hashing_config(_hashing(model_signing))
    try:
        config.use_elliptic_key_verifier(public_key=key)
    except Exception as e:  # as for signing
        raise LoadError(f"{key} is not an elliptic-curve public key ({e})", "pass the .pub of the signing key") from None
    try:
        config.verify(folder, signature)
    except ValueError as e:
        message = str(e)
        if "Key mismatch" in message or "verification failed" in message.lower():
            raise LoadError(f"the signature {signature} is not by the trusted key {key}",
                            "verify with the public key of whoever signed it, or re-sign the artifact") from None
        if "Signature mismatch" in message:
            raise LoadError(f"artifact {folder} does not match its signature: {_what_differs(message)}",
                            "recompile or re-copy the artifact from its source, then sign it again") from None
        raise _unreadable(signature, e) from None
    except Exception as e:  # a damaged bundle: model-signing raises what its parsers raise
        raise _unreadable(signature, e) from None


def _unreadable(signature: Path, error: Exception) -> LoadError:
    return LoadError(f"the signature {signature} cannot be read ({type(error).__name__}: {error})",
                     "re-sign the artifact with `edgeseq sign`")
