"""The CLI end to end, and every bad input it promises a one-line error for."""

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import ALL_ON

from edgeseq.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    text = result.output.strip()
    assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert text.startswith("error"), text
    assert len(text.splitlines()) <= 3, text  # one logical line (the console may wrap it)
    for fragment in fragments:
        assert fragment in " ".join(text.split()), text


def test_the_one_line_check_catches_a_traceback():
    """The check above must fail on what it guards against (its `A and B or C` once let a
    traceback through whenever click exited with SystemExit)."""
    from types import SimpleNamespace

    traceback = SimpleNamespace(exit_code=1, output="error: Traceback (most recent call last): ...\n",
                                exception=SystemExit(1))
    with pytest.raises(AssertionError, match="Traceback"):
        assert_one_line_error(traceback)


def test_init_compile_generate_parity_inspect_bench(tmp_path):
    ckpt, art = tmp_path / "ckpt", tmp_path / "art"
    r = run("init", "red", "-o", ckpt, "--set", "d_model=32", "--set", "n_heads=2", "--set", "vocab_size=40", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["config"]["d_model"] == 32
    r = run("compile", ckpt, "-o", art, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["parity"]["passed"]
    r = run("generate", art, "--input-ids", "5 17 3", "--input-ids", "9", "--max-new-tokens", "4", "--stop-token", "999", "--json")
    assert r.exit_code == 0, r.output
    tokens = json.loads(r.output)["tokens"]
    assert len(tokens) == 2 and all(len(t) == 4 for t in tokens)
    r = run("generate", art, "--input-ids", "5 17 3", "--num-samples", "3", "--do-sample", "--seed", "2",
            "--max-new-tokens", "4", "--stop-token", "999", "--json")
    assert r.exit_code == 0, r.output
    samples = json.loads(r.output)
    assert len(samples["tokens"]) == 3 and [x["finish_reason"] for x in samples["results"]] == ["length"] * 3
    r = run("generate", art, "--input-ids", "5 17 3", "--do-sample", "--seed", "4", "--top-p", "0.9", "--temperature", "0.7")
    assert r.exit_code == 0, r.output
    r = run("parity", art, "--reference", ckpt, "--steps", "16", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["greedy_token_agreement"] == 1.0
    r = run("inspect", art, "--json")
    info = json.loads(r.output)
    assert set(info["graphs"]) == {"encoder", "encoder_extend", "decoder_step"}  # a causal encoder: blocked encoding
    assert info["prefix_cache"]["supported"] and "prefix cache: blocks of 32" in " ".join(run("inspect", art).output.split())
    assert info["stats"]["sequential_depth_per_token"] == 2 and info["stats"]["flops_per_token"] > 0
    r = run("inspect", art)
    assert r.exit_code == 0 and "sequential depth 2" in " ".join(r.output.split())
    r = run("bench", art, "--vs-torch", ckpt, "--rounds", "1", "--new-tokens", "4", "--source-len", "4", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert len(report["results"]) == 2 and report["bandwidth_gb_s"] > 0
    assert report["speedup_vs_torch"]["decode_tok_s_b1"] > 0
    # the roofline is read at the step's working set, and says which memory level that was
    assert report["memory_level"] in ("last-level cache", "unknown") and report["roofline_bandwidth_gb_s"] > 0  # tiny
    assert all(row["memory_level"] and row["roofline_bandwidth_gb_s"] > 0 for row in report["step_ms_by_position"])
    assert report["cpu"]["features"] is not None and "int8_weight_bits" in report["cpu"]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["init", "gpt9", "-o", "{tmp}/x"], ["unknown model family 'gpt9'", "red"]),
        (["init", "red", "-o", "{tmp}/x", "--preset", "huge"], ["unknown red preset 'huge'", "tiny"]),
        (["init", "red", "-o", "{tmp}/x", "--set", "colour=blue"], ["unknown red config key", "colour"]),
        (["init", "red", "-o", "{tmp}/x", "--set", "d_model=wide"], ["d_model='wide' is not a int"]),
        (["init", "red", "-o", "{tmp}/x", "--set", "share_parameters=maybe"], ["not a boolean"]),
        (["init", "red", "-o", "{tmp}/x", "--set", "d_model"], ["not key=value"]),
        (["init", "red", "-o", "{tmp}/x", "--set", "n_heads=3"], ["not divisible"]),
        (["compile", "{tmp}/nothing", "-o", "{tmp}/x"], ["not a checkpoint folder"]),
        (["generate", "{tmp}/nothing", "--input-ids", "1"], ["not an artifact folder"]),
        (["bench", "{tmp}/nothing", "--concurrency", "0"], ["--concurrency 0 must be at least 1"]),
    ],
)
def test_bad_input_gets_one_line_error_and_writes_nothing(tmp_path, args, fragments):
    result = run(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == []  # no half-written or temporary folder either


def test_bad_checkpoints_are_named(tmp_path, artifacts):
    ckpt, _ = artifacts.get(**ALL_ON)
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert_one_line_error(run("compile", broken, "-o", tmp_path / "a"), "not a readable safetensors file")
    (broken / "model.safetensors").unlink()
    assert_one_line_error(run("compile", broken, "-o", tmp_path / "a"), "model.safetensors is missing")
    (broken / "config.json").write_text("{")
    assert_one_line_error(run("compile", broken, "-o", tmp_path / "a"), "not valid JSON")
    (broken / "config.json").write_text('{"d_model": 4}')
    assert_one_line_error(run("compile", broken, "-o", tmp_path / "a"), 'no "family" key')
    (broken / "config.json").write_text('{"family": "red", "d_model": 64, "n_heads": 4}')
    shutil.copy(ckpt / "model.safetensors", broken / "model.safetensors")
    assert_one_line_error(run("compile", broken, "-o", tmp_path / "a"), "does not match config.json")
    assert not (tmp_path / "a").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_bad_generate_input_on_the_cli(artifacts):
    _, art = artifacts.get(**ALL_ON)
    assert_one_line_error(run("generate", art, "--input-ids", "5 x 3"), "not a list of integers")
    assert_one_line_error(run("generate", art, "--input-ids", ""), "input row 0 is empty")
    assert_one_line_error(run("generate", art, "--input-ids", "5 4000"), "outside the vocabulary")
    assert_one_line_error(run("generate", art, "--input-ids", " ".join(["5"] * 200)), "longer than max_positions")
    assert_one_line_error(run("generate", art, "--input-ids", "5", "--target", "tensorrt"), "not available yet")


def test_altered_artifact_on_the_cli(artifacts, tmp_path):
    _, art = artifacts.get(**ALL_ON)
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    (copy / "encoder.onnx").write_bytes((copy / "encoder.onnx").read_bytes() + b" ")
    assert_one_line_error(run("inspect", copy), "encoder.onnx", "altered")
    assert_one_line_error(run("generate", copy, "--input-ids", "5"), "altered")


def test_parity_against_the_wrong_checkpoint_fails(artifacts):
    ckpt_other, _ = artifacts.get(seed=7, **ALL_ON)
    _, art = artifacts.get(**ALL_ON)
    result = run("parity", art, "--reference", ckpt_other, "--steps", "8")
    assert result.exit_code == 1 and "FAIL" in result.output


def test_stagformer_on_the_cli(tmp_path):
    ckpt, art, one = tmp_path / "ckpt", tmp_path / "art", tmp_path / "one"
    sets = ["--set", "d_model=32", "--set", "n_layers=4", "--set", "shared_weights=true", "--set", "vocab_size=40"]
    assert run("init", "stagformer", "-o", ckpt, *sets).exit_code == 0
    r = run("compile", ckpt, "-o", art, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["parity"]["passed"]
    assert run("compile", ckpt, "-o", one, "--no-split").exit_code == 0
    outputs = []
    for path, schedule in ((art, "concurrent"), (art, "sequential"), (one, "concurrent")):
        r = run("generate", path, "--input-ids", "5 17 3", "--input-ids", "9", "--max-new-tokens", "6",
                "--stop-token", "999", "--schedule", schedule, "--json")
        assert r.exit_code == 0, r.output
        outputs.append(json.loads(r.output)["tokens"])
    assert outputs[0] == outputs[1] == outputs[2]  # same model, however its stages run
    r = run("generate", art, "--input-ids", "5 17 3", "--schedule", "recurrent", "--low-memory")
    assert r.exit_code == 0, r.output
    r = run("inspect", art)
    text = " ".join(r.output.split())
    assert "stage.0, stage.1" in text and "stage.0:handoff.0 -> stage.1:memory.1" in text and "sequential depth 2" in text
    assert "sequential depth 4" in " ".join(run("inspect", one).output.split())
    assert_one_line_error(run("bench", art, "--vs-torch", ckpt), "--vs-torch is available for red")
    assert_one_line_error(run("generate", one, "--input-ids", "5", "--schedule", "recurrent"), "needs a split artifact")
    r = run("bench", art, "--rounds", "1", "--new-tokens", "4", "--source-len", "4", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["family"] == "stagformer"
