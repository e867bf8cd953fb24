"""NASH: Hugging Face T5 v1 / v1.1 / BART with masks -> stripped ONNX -> parity with transformers.

Each case writes a random-weight transformers checkpoint (and zs.pt) locally, compiles
it (export -> strip pass -> artifact -> the compile's own parity check), and then checks
the artifact again here: the parity report, what the pass removed, and the graphs'
signatures. Reference = transformers with the masks folded in (models/nash.py).
"""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import declared_atol
from edgeseq.models.nash import fold_masks, keep_decoder_layers, load_nash, nash_dims, select_layers
from edgeseq.models.nash_checkpoints import random_masks, random_model, save_hf_checkpoint
from edgeseq.models.nash_masks import normalize_masks
from edgeseq.runtimes import load

from edgeseq.errors import CheckpointError
from edgeseq.parity import hf_parity
from edgeseq.pipeline import compile_checkpoint

VARIANTS = ("t5-v1", "t5-v1.1", "bart")
L, H, F = 2, 4, 64  # the tiny size: layers per stack, heads, FFN width


def edge_masks() -> dict[str, torch.Tensor]:
    """Every edge case of the issue at once: all heads of encoder layer 0 pruned, a whole
    encoder FFN pruned, decoder layers keeping different heads (layer 0's included), a
    whole decoder cross-attention and a whole decoder FFN pruned, soft values elsewhere."""
    g = torch.Generator().manual_seed(3)
    head_z = 0.5 + 0.5 * torch.rand(L, 1, H, 1, 1, generator=g)
    head_z[0] = 0
    intermediate_z = 0.5 + 0.5 * torch.rand(L, F, generator=g)
    intermediate_z[1] = 0
    dec_self = 0.5 + 0.5 * torch.rand(L, H, generator=g)
    dec_self[0, [0, 2]] = 0
    dec_self[1, [1]] = 0
    return {
        "head_z": head_z, "intermediate_z": intermediate_z, "head_layer_z": torch.tensor([0.9, 0.7]),
        "dec_self_head_z": dec_self, "dec_cross_head_layer_z": torch.tensor([0.8, 0.0]),
        "dec_mlp_z": torch.tensor([0.0, 0.6]), "dec_intermediate_z": (torch.rand(L, F, generator=g) > 0.3).float(),
    }


def decoder_self_gone() -> dict[str, torch.Tensor]:
    """Decoder layer 0 loses all self-attention heads: its cache must leave the graph."""
    return {"dec_self_head_z": torch.tensor([[0.0] * H, [1.0, 0.0, 0.5, 1.0]])}


def cross_attention_gone() -> dict[str, torch.Tensor]:
    """No decoder layer keeps cross-attention: the decoder reads nothing from the encoder
    (its keys/values and the source padding bias leave both graphs)."""
    return {"dec_cross_head_layer_z": torch.zeros(L)}


MASKS = {
    "none": lambda dims: None,
    "sparse30": lambda dims: random_masks(dims, 0.3, seed=1),
    "sparse60": lambda dims: random_masks(dims, 0.6, seed=2),
    "edge": lambda dims: edge_masks(),
    "decoder-self-gone": lambda dims: decoder_self_gone(),
    "hidden": lambda dims: random_masks(dims, 0.3, seed=4, hidden=True),
    "cross-gone": lambda dims: cross_attention_gone(),
}
# every mask kind and every variant at least once; the rest of the grid runs with -m slow
FAST = [("t5-v1", "edge"), ("bart", "edge"), ("t5-v1.1", "hidden"), ("bart", "decoder-self-gone"),
        ("t5-v1.1", "none"), ("t5-v1", "cross-gone")]
SLOW = [(v, m) for v in VARIANTS for m in MASKS if (v, m) not in FAST]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("nash")
    cache = {}

    def get(variant: str, masks: str):
        if (variant, masks) not in cache:
            model = random_model(variant, "tiny", seed=0)
            ckpt = save_hf_checkpoint(model, root / f"{variant}-{masks}", MASKS[masks](nash_dims(model.config)))
            art = root / f"{variant}-{masks}.artifact"
            compile_checkpoint(ckpt, art)
            cache[variant, masks] = ckpt, art
        return cache[variant, masks]

    return get


def _manifest(art) -> dict:
    return json.loads((art / "manifest.json").read_text())


def check_parity(compiled, variant, masks):
    ckpt, art = compiled(variant, masks)
    m = _manifest(art)
    assert m["parity"]["passed"], m["parity"]
    assert m["parity"]["max_abs_logit_diff"] <= declared_atol("nash")
    assert m["parity"]["steps"] == 64
    # batch 1 at several source lengths and one mixed-length batch, checked here again
    from edgeseq.exporters.nash import prepare

    report = hf_parity(load(art), prepare(load_nash(ckpt)), declared_atol("nash"), cases=[[9], [3, 12, 1]])
    assert report["passed"], report
    assert all(c["greedy_token_agreement"] == 1.0 or c["disagreement_is_near_tie"] for c in report["cases"])
    return m


@pytest.mark.parametrize("variant,masks", FAST)
def test_parity_with_transformers(compiled, variant, masks):
    check_parity(compiled, variant, masks)


@pytest.mark.slow
@pytest.mark.parametrize("variant,masks", SLOW)
def test_parity_with_transformers_full_grid(compiled, variant, masks):
    check_parity(compiled, variant, masks)


def _signature(art, graph):
    model = onnx.load(str(art / f"{graph}.onnx"), load_external_data=False)
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output], model


@pytest.mark.parametrize("variant", ["t5-v1", "bart"])
def test_pruned_units_are_gone(compiled, variant):
    _, art = compiled(variant, "edge")
    m = _manifest(art)
    before, after = m["pruning"]["before"], m["pruning"]["after"]
    assert after["parameters"] < before["parameters"]
    assert after["encoder_flops_per_source_token"] < before["encoder_flops_per_source_token"]
    assert after["weight_bytes_per_token"] < before["weight_bytes_per_token"]  # decoder FFN 0 and cross 1
    kept = m["pruning"]["kept"]
    assert kept["heads"]["encoder.0.self_attention"] == f"0/{H}"
    assert kept["heads"]["decoder.0.self_attention"] == f"2/{H}"
    assert kept["heads"]["decoder.1.self_attention"] == f"3/{H}"
    assert kept["ffn"]["encoder.1.ffn"] == f"0/{F}"
    # the removed cross-attention's keys/values leave both graphs; caches differ per layer
    _, enc_out, _ = _signature(art, "encoder")
    dec_in, dec_out, dec = _signature(art, "decoder_step")
    assert "source_key.1" not in enc_out and "source_key.1" not in dec_in and "source_key.0" in dec_in
    heads = {i.name: i.type.tensor_type.shape.dim[1].dim_value for i in dec.graph.input if i.name.startswith("past_")}
    assert heads == {"past_key.0": 2, "past_value.0": 2, "past_key.1": 3, "past_value.1": 3}
    spec = {t["name"]: t["dims"] for t in m["graphs"]["decoder_step"]["inputs"]}
    assert spec["past_key.0"][1] == 2 and spec["past_key.1"][1] == 3


def test_removed_self_attention_drops_its_cache(compiled):
    _, art = compiled("bart", "decoder-self-gone")
    dec_in, dec_out, _ = _signature(art, "decoder_step")
    assert "past_key.0" not in dec_in and "new_key.0" not in dec_out
    assert "past_key.1" in dec_in and "new_value.1" in dec_out


def test_decoder_without_cross_attention_reads_nothing_from_the_encoder(compiled):
    _, art = compiled("t5-v1", "cross-gone")
    dec_in, _, _ = _signature(art, "decoder_step")
    assert not [name for name in dec_in if name.startswith("source_")]
    # the runtime feeds only what the decoder takes (parity for this case: the FAST grid)
    assert load(art).generate([[5, 6, 7]], max_new_tokens=3, stop_tokens=[]).tokens[0]


def test_every_whole_sublayer_cut_leaves_no_matmul_for_it(compiled):
    """Encoder layer 0 has no heads left: its attention MatMuls are gone, only its FFN's remain."""
    _, art = compiled("t5-v1", "edge")
    _, _, enc = _signature(art, "encoder")
    weights = {i.name for i in enc.graph.initializer}
    assert not any(n.startswith("nash.encoder_layers.0.0.") for n in weights)
    assert not any(n.startswith("nash.encoder_layers.1.1.") for n in weights)  # the pruned FFN
    assert any(n.startswith("nash.encoder_layers.0.1.") for n in weights)


def test_hidden_dims_are_stripped(compiled):
    _, art = compiled("bart", "hidden")
    m = _manifest(art)
    kept, size = (int(x) for x in m["pruning"]["kept"]["hidden"].split("/"))
    assert kept < size
    tensors = m["weights"]["tensors"]
    dec = m["graphs"]["decoder_step"]["initializers"]
    assert tensors[dec["nash.lm_head"]]["shape"][0] == kept


def test_infer_kept_from_zero_slices_matches_the_masks():
    """A graph exported without the plan's kept lists: the zeros of the folded weights
    say the same thing the masks said."""
    from edgeseq.exporters.base import export_graphs
    from edgeseq.exporters.nash import NashExporter, prepare
    from edgeseq.models.nash import NashCheckpoint, fold_masks
    from edgeseq.passes.strip_pruned import infer_kept

    hf = random_model("bart", "tiny", seed=0)
    dims = nash_dims(hf.config)
    masks = normalize_masks(edge_masks(), dims)
    fold_masks(hf, masks)
    model = prepare(NashCheckpoint(hf, masks, dims, "bart", "bart"))
    graphs = export_graphs(model, NashExporter())
    blank = json.loads(json.dumps(model.plan))
    for unit in blank["attention"] + blank["ffn"]:
        unit["kept"] = None
    inferred = infer_kept([g.model for g in graphs], blank)
    assert [u["kept"] for u in inferred["attention"]] == [u["kept"] for u in model.plan["attention"]]
    assert [u["kept"] for u in inferred["ffn"]] == [u["kept"] for u in model.plan["ffn"]]


def test_skipping_the_fold_changes_outputs():
    """The soft mask values matter: zeroing pruned units alone is not the NASH model."""
    hf = random_model("t5-v1.1", "tiny", seed=0)
    dims = nash_dims(hf.config)
    masks = normalize_masks(random_masks(dims, 0.3, seed=1), dims)
    hard = {k: (v != 0).float() for k, v in masks.items()}
    ids = torch.randint(3, 96, (1, 6))
    outs = []
    for m in (masks, hard):
        model = random_model("t5-v1.1", "tiny", seed=0)
        fold_masks(model, m)
        with torch.no_grad():
            outs.append(model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits)
    assert (outs[0] - outs[1]).abs().max() > 1e-3


# ----- decoder layer selection ------------------------------------------------------------
def test_uniform_layer_selection_matches_the_paper():
    assert select_layers(12, 3, "unif") == [0, 5, 11]
    assert select_layers(6, 3, "unif") == [0, 2, 5]
    assert select_layers(6, 3, "low") == [0, 1, 2]
    assert select_layers(6, 3, "high") == [3, 4, 5]
    with pytest.raises(CheckpointError, match="choose one of: unif, low, high"):
        select_layers(6, 3, "middle")
    with pytest.raises(CheckpointError, match="cannot keep 7 of 6"):
        select_layers(6, 7)


@pytest.mark.parametrize("variant", ["t5-v1", "bart"])
def test_selected_decoder_compiles_with_parity(tmp_path, variant):
    """`high` drops T5's layer 0, which holds the relative position bias: it must move."""
    model = random_model(variant, "small", seed=1)
    keep_decoder_layers(model, select_layers(3, 2, "high"))
    assert nash_dims(model.config).decoder_layers == 2
    ckpt = save_hf_checkpoint(model, tmp_path / "ckpt")
    manifest = compile_checkpoint(ckpt, tmp_path / "art")
    assert manifest["parity"]["passed"], manifest["parity"]
    assert manifest["model_config"]["decoder_layers"] == 2


def coinciding_weights(variant: str):
    """A checkpoint in which several weights are equal, as a new user's can be. BART: a
    fresh initialisation, every linear bias zero. T5: encoder layer 1's attention and FFN
    weights copied from layer 0."""
    from edgeseq.models.nash_checkpoints import hf_config
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(5)
    model = AutoModelForSeq2SeqLM.from_config(hf_config(variant, "tiny")).eval()
    if variant != "bart":
        first = dict(model.encoder.block[0].named_parameters())
        with torch.no_grad():
            for name, weight in model.encoder.block[1].named_parameters():
                weight.copy_(first[name])
    return model


@pytest.mark.parametrize("variant", ["bart", "t5-v1"])
def test_equal_weights_compile_with_parity(tmp_path, variant):
    """Equal tensors once became one shared initializer, and slicing it for one layer's kept
    heads broke the others ("Op (Add) Incompatible dimensions" at load)."""
    model = coinciding_weights(variant)
    if variant == "bart":
        biases = [m.bias for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None]
        assert biases and all(not b.any() for b in biases)
    ckpt = save_hf_checkpoint(model, tmp_path / "ckpt", random_masks(nash_dims(model.config), 0.5, seed=6))
    manifest = compile_checkpoint(ckpt, tmp_path / "art")
    assert manifest["parity"]["passed"], manifest["parity"]
    assert manifest["parity"]["greedy_token_agreement"] == 1.0
    from edgeseq.exporters.nash import prepare

    report = hf_parity(load(tmp_path / "art"), prepare(load_nash(ckpt)), declared_atol("nash"), cases=[[9], [3, 12, 1]])
    assert report["passed"], report
    assert all(c["greedy_token_agreement"] == 1.0 for c in report["cases"]), report["cases"]


def test_bart_with_different_encoder_and_decoder_head_counts_compiles_with_parity(tmp_path):
    """d_model 64 split into 4 encoder heads (16 wide) and 2 decoder heads (32 wide): the cross
    caches hold the decoder's heads ("tracing graph 'decoder_step' failed" before)."""
    from transformers import AutoModelForSeq2SeqLM, BartConfig

    torch.manual_seed(3)
    config = BartConfig(vocab_size=96, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=96, max_position_embeddings=128,
                        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=None)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    ckpt = save_hf_checkpoint(model, tmp_path / "ckpt", random_masks(nash_dims(model.config), 0.3, seed=7))
    manifest = compile_checkpoint(ckpt, tmp_path / "art")
    assert manifest["parity"]["passed"] and manifest["parity"]["greedy_token_agreement"] == 1.0, manifest["parity"]


# ----- bad input ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    return save_hf_checkpoint(random_model("t5-v1", "tiny"), tmp_path_factory.mktemp("t5") / "ckpt")


def _with_masks(folder, tmp_path, masks):
    import shutil

    out = tmp_path / "ckpt"
    shutil.copytree(folder, out)
    torch.save(masks, out / "zs.pt")
    return out


@pytest.mark.parametrize("masks,message", [
    ({"head_z": torch.ones(L, 1, 3, 1, 1)}, r"head_z has shape \[2, 1, 3, 1, 1\]; expected \[2, 1, 4, 1, 1\] or \[2, 4\]"),
    ({"intermediate_z": torch.ones(L, 10)}, r"intermediate_z has shape \[2, 10\]; expected .*d_ff = 64"),
    ({"head_zz": torch.ones(L, H)}, r"unknown mask key\(s\): head_zz.*NASH mask keys are: head_z"),
    ({"head_z": torch.ones(6, H)}, r"head_z has masks for 6 layers but the checkpoint's encoder has 2"),
    ({"dec_mlp_z": torch.ones(4)}, r"dec_mlp_z has masks for 4 layers but the checkpoint's decoder has 2"),
    ({"hidden_z": torch.ones(5)}, r"hidden_z has shape \[5\]; expected \[32\]"),
    ({"mlp_z": -torch.ones(L)}, r"negative or non-finite"),
])
def test_bad_masks_are_named(t5_folder, tmp_path, masks, message):
    with pytest.raises(CheckpointError, match=message):
        load_nash(_with_masks(t5_folder, tmp_path, masks))
    assert not (tmp_path / "out").exists()


def test_masks_file_is_never_unpickled(t5_folder, tmp_path):
    """A zs.pt holding arbitrary Python objects is refused by weights_only loading."""
    folder = _with_masks(t5_folder, tmp_path, {"head_z": torch.ones(L, H)})
    torch.save({"head_z": np.array([1.0])}, folder / "zs.pt")  # a numpy object: needs full unpickling
    with pytest.raises(CheckpointError, match="not a readable tensor file"):
        load_nash(folder)


def test_unsupported_architecture_is_named(tmp_path):
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(CheckpointError, match=r"model_type 'gpt2' is not a supported architecture.*T5.*BART"):
        compile_checkpoint(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----- the CLI ------------------------------------------------------------------------------
def test_cli_init_compile_generate_inspect_parity(tmp_path):
    from click.testing import CliRunner

    from edgeseq.cli import cli

    def run(*args):
        return CliRunner().invoke(cli, [str(a) for a in args])

    ckpt, art = tmp_path / "ckpt", tmp_path / "art"
    r = run("init", "nash", "-o", ckpt, "--set", "variant=bart", "--set", "decoder_layers=1", "--set", "sparsity=0.5")
    assert r.exit_code == 0, r.output
    assert (ckpt / "zs.pt").exists() and (ckpt / "model.safetensors").exists()
    r = run("compile", ckpt, "-o", art, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["parity"]["passed"]
    r = run("generate", art, "--input-ids", "5 17 3", "--input-ids", "9", "--max-new-tokens", "4", "--stop-token", "999", "--json")
    assert r.exit_code == 0 and [len(t) for t in json.loads(r.output)["tokens"]] == [4, 4], r.output
    r = run("inspect", art)
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "FFN width" in text and "parameters:" in text, r.output
    assert any("encoder.0" in line and f"2/{H}" in line and f"{F // 2}/{F}" in line for line in r.output.splitlines())
    info = json.loads(run("inspect", art, "--json").output)
    assert info["pruning"]["after"]["parameters"] < info["pruning"]["before"]["parameters"]
    r = run("parity", art, "--reference", ckpt, "--steps", "8", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["passed"], r.output
    check_text_in_and_out(run, ckpt, art, info)
    r = run("init", "nash", "-o", tmp_path / "x", "--set", "layers=3")
    assert r.exit_code != 0 and "unknown nash init key 'layers'" in r.output


def check_text_in_and_out(run, ckpt, art, info):
    """init writes a tokenizer.json; compile carries it; --text goes through it both ways
    and gives the tokens that the same ids give."""
    from tokenizers import Tokenizer

    assert info["tokenizer"] == {"file": "tokenizer.json", "vocab_size": 96}
    tokenizer = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    texts = ["the cat sat on the mat.", "a red bird sings"]
    r = run("generate", art, "--text", texts[0], "--text", texts[1], "--max-new-tokens", "6", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    ids = [tokenizer.encode(t).ids for t in texts]
    assert ids[0][0] == 0 and ids[0][-1] == 2  # BART's <s> ... </s>
    by_ids = json.loads(run("generate", art, *[a for row in ids for a in ("--input-ids", " ".join(map(str, row)))],
                            "--max-new-tokens", "6", "--json").output)
    assert out["tokens"] == by_ids["tokens"]
    assert out["text"] == [tokenizer.decode(row, skip_special_tokens=True) for row in out["tokens"]]
    r = run("generate", art, "--text", "x", "--input-ids", "5")
    assert r.exit_code == 1 and "one of them" in r.output


def test_text_needs_a_tokenizer(compiled):
    """An artifact compiled from a folder without tokenizer.json keeps working with ids and
    says clearly that text needs one."""
    from click.testing import CliRunner

    from edgeseq.cli import cli

    _, art = compiled("t5-v1", "edge")
    assert "tokenizer" not in _manifest(art)
    r = CliRunner().invoke(cli, ["generate", str(art), "--text", "the cat"])
    assert r.exit_code == 1 and "has no tokenizer" in r.output and "token ids" in r.output, r.output


def test_tokenizer_bigger_than_the_vocabulary_fails_the_compile(tmp_path):
    from edgeseq.models.tokenizer import write_tokenizer

    from edgeseq.errors import BuildError
    from edgeseq.tokenizer_files import carry_tokenizer, tokenizer_hint

    write_tokenizer(tmp_path, 96, "t5")
    with pytest.raises(BuildError, match="has 96 tokens but the model's vocabulary is 50"):
        carry_tokenizer(tmp_path, tmp_path / "out", 50)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(BuildError, match="not a tokenizer the `tokenizers` library can read"):
        carry_tokenizer(tmp_path, tmp_path / "out", 96)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "spiece.model").write_bytes(b"x")
    assert "spiece.model found but no tokenizer.json" in tokenizer_hint(tmp_path)
    assert carry_tokenizer(tmp_path, tmp_path / "out", 96) is None


def test_cli_bad_hf_input_is_one_line(t5_folder, tmp_path):
    from click.testing import CliRunner

    from edgeseq.cli import cli

    folder = _with_masks(t5_folder, tmp_path, {"dec_self_head_z": torch.ones(3, H)})
    r = CliRunner().invoke(cli, ["compile", str(folder), "-o", str(tmp_path / "out")])
    text = r.output.strip()
    assert r.exit_code == 1 and text.startswith("error") and "Traceback" not in text
    assert "dec_self_head_z has masks for 3 layers but the checkpoint's decoder has 2" in " ".join(text.split())
    assert not (tmp_path / "out").exists()


def test_nash_runtime_needs_no_torch_or_transformers(compiled):
    from conftest import run_without_torch

    _, art = compiled("t5-v1", "edge")
    done = run_without_torch(art)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[[")
