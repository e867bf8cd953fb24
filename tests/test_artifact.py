"""The artifact contract: one copy of each weight, checksums, format version, atomic writes."""

import json
import shutil

import pytest
from conftest import ALL_ON
from edgeseq.runtimes import load, read_artifact
from edgeseq.runtimes.artifact import FORMAT_VERSION

from edgeseq.errors import BuildError, LoadError, ParityError


def layer_bytes(manifest) -> int:
    """Stored bytes of tensors that belong to transformer layers (not embeddings or the head)."""
    layer_keys = {
        key for g in manifest["graphs"].values() for name, key in g["initializers"].items() if "layers." in name
    }
    return sum(manifest["weights"]["tensors"][k]["bytes"] for k in layer_keys)


def test_shared_parameters_are_stored_once_and_halve_the_weight_bytes(artifacts):
    # layerwise coordination off: every encoder layer feeds the decoder, so all are stored
    base = dict(ALL_ON, layerwise_coordination=False)
    _, shared = artifacts.get(**base)
    _, separate = artifacts.get(**{**base, "share_parameters": False})
    shared_m, separate_m = read_artifact(shared).manifest, read_artifact(separate).manifest
    # both graphs name the same layer weights, which map to one stored tensor each
    enc = shared_m["graphs"]["encoder"]["initializers"]
    dec = shared_m["graphs"]["decoder_step"]["initializers"]
    common = set(enc) & set(dec)
    assert any(".layers." in n for n in common)
    assert all(enc[n] == dec[n] for n in common)
    assert layer_bytes(separate_m) == pytest.approx(2 * layer_bytes(shared_m), rel=0.02)
    ratio = shared_m["stats"]["weight_bytes"] / separate_m["stats"]["weight_bytes"]
    # embeddings and the LM head are not layers: in this toy they are ~20% of the weights
    assert 0.5 <= ratio < 0.65, ratio


def test_dead_last_encoder_layer_is_not_stored(artifacts):
    """With layerwise coordination, decoder layer l reads encoder layer l's input, so the last
    encoder layer feeds nothing at inference; the artifact must not carry its weights."""
    _, art = artifacts.get(**{**ALL_ON, "share_parameters": False})
    names = set(read_artifact(art).manifest["graphs"]["encoder"]["initializers"])
    assert any(n.startswith("model.encoder_layers.0.") for n in names)
    assert not any(n.startswith("model.encoder_layers.1.") for n in names)


def test_weights_file_size_matches_the_distinct_tensors(artifacts):
    _, art = artifacts.get(**ALL_ON)
    m = read_artifact(art).manifest
    assert m["files"]["weights.bin"]["bytes"] >= m["stats"]["weight_bytes"]
    assert m["files"]["weights.bin"]["bytes"] < m["stats"]["weight_bytes"] + 64 * len(m["weights"]["tensors"])


def copy_of(artifacts, tmp_path):
    _, art = artifacts.get(**ALL_ON)
    dst = tmp_path / "copy"
    shutil.copytree(art, dst)
    return dst


def test_altered_file_is_refused(artifacts, tmp_path):
    art = copy_of(artifacts, tmp_path)
    with open(art / "weights.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x02")
    with pytest.raises(LoadError, match="weights.bin .*altered"):
        load(art)


def test_missing_file_is_refused(artifacts, tmp_path):
    art = copy_of(artifacts, tmp_path)
    (art / "decoder_step.onnx").unlink()
    with pytest.raises(LoadError, match="decoder_step.onnx is missing"):
        load(art)


def test_newer_format_is_refused(artifacts, tmp_path):
    art = copy_of(artifacts, tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LoadError, match="newer than this edgeseq"):
        load(art)


def test_an_artifact_of_format_1_asks_for_a_recompile(artifacts, tmp_path):
    """Format 1 grew caches by Concat and had no wiring: this runtime cannot drive it."""
    art = copy_of(artifacts, tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["format_version"] = 1
    (art / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LoadError, match="older than this edgeseq runs.*recompile"):
        load(art)


def test_not_an_artifact_is_refused(tmp_path):
    with pytest.raises(LoadError, match="manifest.json is missing"):
        load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(LoadError, match="not valid JSON"):
        load(tmp_path)


def test_existing_output_is_kept_unless_forced(artifacts, tmp_path):
    from edgeseq.pipeline import compile_checkpoint

    ckpt, _ = artifacts.get(**ALL_ON)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BuildError, match="already exists"):
        compile_checkpoint(ckpt, out)


def test_failed_parity_leaves_no_output_folder(artifacts, tmp_path, monkeypatch):
    from dataclasses import replace

    from edgeseq import families, parity, pipeline

    ckpt, _ = artifacts.get(**ALL_ON)
    failing = lambda *a, **k: {**parity.encoder_decoder_parity(*a, **k), "passed": False}  # noqa: E731
    monkeypatch.setitem(families.FAMILIES, "red", replace(families.FAMILIES["red"], parity=failing))
    with pytest.raises(ParityError, match="max abs logit difference"):
        pipeline.compile_checkpoint(ckpt, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "target, message",
    [("tensorrt", "not available yet"), ("ort-cuda", "lacks"), ("onnx-gpu", "unknown target")],
)
def test_unavailable_targets_say_so(artifacts, tmp_path, target, message):
    from edgeseq.pipeline import compile_checkpoint

    ckpt, _ = artifacts.get(**ALL_ON)
    with pytest.raises(BuildError, match=message):
        compile_checkpoint(ckpt, tmp_path / "out", target=target)
    assert not (tmp_path / "out").exists()


def test_unavailable_precision_says_so(artifacts, tmp_path):
    from edgeseq.pipeline import compile_checkpoint

    ckpt, _ = artifacts.get(**ALL_ON)
    with pytest.raises(BuildError, match="fp16.*not available yet"):
        compile_checkpoint(ckpt, tmp_path / "out", precision="fp16")
