"""`edgeseq compile --explain`: the pass pipeline says, per pass, what it rewrote in each graph
and which candidates it declined and why, so a fusion that stops firing is visible in one
command (a t5-small-shaped NASH checkpoint, as users deploy); the manifest keeps the counts."""

import json

from click.testing import CliRunner

from edgeseq.cli import cli

FUSIONS = ("FuseAttentionPass", "PackSharedProjections", "FuseResidualNormPass")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_explain_lists_every_fusion_and_the_candidates_it_declined(tmp_path):
    ckpt, art = tmp_path / "t5-small", tmp_path / "art"
    made = run("init", "nash", "--preset", "t5-small", "--set", "variant=t5-v1", "--set", "sparsity=0.3", "-o", ckpt)
    assert made.exit_code == 0, made.output
    done = run("compile", ckpt, "-o", art, "--no-verify", "--explain")
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in done.output.splitlines()
            if line.count("│") >= 4 and "pass" not in line.split("│")[1]}
    for fusion in FUSIONS:  # each fused something, and says how much
        assert int(rows[fusion]) > 0, (fusion, rows)
    # 6 encoder self-attentions and 6 cross-attentions fuse; the 6 decoder self-attentions
    # attend over their cache in place and are declined, each with its reason and node
    assert int(rows["FuseAttentionPass"]) == 12
    assert text.count("FuseAttentionPass declined 1: decoder.") == 6
    assert "has no MultiHeadAttention form" in text and "(decoder_step:" in text
    assert "FuseResidualNormPass declined 2: its input is not a residual Add" in text  # the first norms read embeddings
    manifest = json.loads((art / "manifest.json").read_text())
    summary = {entry["pass"]: entry for entry in manifest["passes"]}
    assert sum(summary["FuseAttentionPass"]["rewrote"].values()) == 12
    assert sum(summary["FuseAttentionPass"]["declined"].values()) == 6


def test_explain_as_json_gives_every_declined_candidate(artifacts, tmp_path):
    ckpt, _ = artifacts.get()
    done = run("compile", ckpt, "-o", tmp_path / "art", "--no-verify", "--explain", "--json")
    assert done.exit_code == 0, done.output
    passes = {entry["pass"]: entry for entry in json.loads(done.output)["passes"]}
    assert list(passes)[-1] == "ClearMetadataAndDocStringPass"  # fp32: quantization does not run
    assert sum(passes["FuseResidualNormPass"]["rewrote"].values()) > 0
    assert all({"graph", "node", "reason"} <= set(d) for entry in passes.values() for d in entry["declined"])
