"""The artifact folder contract: manifest.json, the graphs, one weights file; verified on load.

Torch-free and onnx-free: an edge box reads artifacts with numpy and onnxruntime alone.
Loading checks the format version, that every listed file is present, and every
SHA-256, and refuses with a one-line message naming the file and the fix.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseq.errors import LoadError

FORMAT_VERSION = 2  # 2: wiring (roles, sources) in every graph spec, the decode record, preallocated caches
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.bin"
WEIGHT_ALIGNMENT = 64  # bytes; keeps every tensor aligned for SIMD loads straight from the mapping


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["model_config"]

    def graph(self, role: str) -> dict[str, Any]:
        for name, graph in self.manifest["graphs"].items():
            if graph["role"] == role:
                return {"name": name, **graph}
        raise LoadError(f"artifact {self.path} has no {role!r} graph", "recompile it with `edgeseq compile`")

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def digest(self) -> str:
        """The manifest's SHA-256 (it holds every file's): this artifact's identity."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()


TOKEN_KEYS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")


def check_model_config(manifest_path: Path, config) -> None:
    """The model_config fields every decoding reads are whole numbers (a hand-edited or damaged
    manifest fails here, naming the field, not later inside a step)."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(config, dict):
        raise LoadError(f"{manifest_path}: model_config is not an object", "recompile the artifact")
    for key in TOKEN_KEYS:
        if key in config and not whole(config[key]):
            raise LoadError(f"{manifest_path}: model_config.{key} is {config[key]!r}, not a whole number",
                            "restore the manifest, or recompile the artifact")
    if not whole(config.get("vocab_size")) or config["vocab_size"] < 1:
        raise LoadError(f"{manifest_path}: model_config.vocab_size is {config.get('vocab_size')!r}",
                        "restore the manifest, or recompile the artifact")
    limit = config.get("max_positions")
    if limit is not None and (not whole(limit) or limit < 1):
        raise LoadError(f"{manifest_path}: model_config.max_positions is {limit!r}, not a positive whole number or null",
                        "restore the manifest, or recompile the artifact")


def read_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Read and (by default) verify an artifact folder."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise LoadError(f"{path} is not an artifact folder", "pass the -o folder of `edgeseq compile`")
    if not manifest_path.is_file():
        raise LoadError(f"{manifest_path} is missing", "recompile the artifact with `edgeseq compile`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"{manifest_path} is not valid JSON ({e})", "recompile the artifact") from e
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int):
        raise LoadError(f"{manifest_path} has no format_version", "recompile the artifact with `edgeseq compile`")
    if version > FORMAT_VERSION:
        raise LoadError(
            f"artifact format {version} is newer than this edgeseq reads (up to {FORMAT_VERSION})",
            "upgrade edgeseq on this machine, or compile with the edgeseq version installed here",
        )
    if version < FORMAT_VERSION:
        raise LoadError(
            f"artifact format {version} is older than this edgeseq runs ({FORMAT_VERSION}: preallocated caches "
            "and wiring in the manifest)",
            "recompile the checkpoint with `edgeseq compile`",
        )
    for key in ("family", "model_config", "graphs", "files", "decode"):
        if key not in manifest:
            raise LoadError(f"{manifest_path} lacks {key!r}", "recompile the artifact with `edgeseq compile`")
    check_model_config(manifest_path, manifest["model_config"])
    if verify:
        for name, entry in manifest["files"].items():
            file = path / name
            if not file.is_file():
                raise LoadError(f"artifact file {name} is missing from {path}", "copy the whole artifact folder, or recompile it")
            if file.stat().st_size != entry["bytes"] or sha256_file(file) != entry["sha256"]:
                raise LoadError(
                    f"artifact file {name} in {path} was altered (SHA-256 does not match the manifest)",
                    "restore the original file or recompile the artifact",
                )
    return Artifact(path, manifest)
