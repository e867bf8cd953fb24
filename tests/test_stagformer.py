"""StagFormer: parity of split and unsplit artifacts with PyTorch, concurrent stages, the split pass."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import declared_atol, stagformer_model
from edgeseq.exporters import GraphSpec, TensorSpec, exporter_for
from edgeseq.exporters.base import export_graph
from edgeseq.models.checkpoint import load_checkpoint, make_config
from edgeseq.passes.split_stages import SplitStagesPass
from edgeseq.runtimes import load, read_artifact

from edgeseq.errors import ConfigError, PassError
from edgeseq.parity import decoder_only_parity

ATOL = declared_atol("stagformer")
CASES = [[1], [6], [40], [1, 17, 9]]  # prompt lengths; the last is one left-padded batch

GRID = {
    "p2": dict(n_stacks=2, n_layers=4),
    "p3": dict(n_stacks=3, n_layers=3),
    "p2-shared": dict(n_stacks=2, n_layers=4, shared_weights=True),
    "p2-window2": dict(n_stacks=2, n_layers=4, cross_window=2),
    "p1-baseline": dict(n_stacks=1, n_layers=2),
    "p2-uneven": dict(n_stacks=2, n_layers=4, stack_layers="3,1"),  # a deeper first stack
    "p3-uneven": dict(n_stacks=3, n_layers=4, stack_layers="1,1,2"),
}


FAST = [("p2", True), ("p2", False), ("p2-shared", True), ("p1-baseline", True), ("p2-uneven", True)]
SLOW = [("p3", True), ("p2-window2", True), ("p2-shared", False), ("p2-uneven", False), ("p3-uneven", True)]


@pytest.mark.parametrize("name, split", FAST, ids=lambda v: v if isinstance(v, str) else ("split" if v else "unsplit"))
def test_stagformer_parity(artifacts, name, split):
    check_parity(artifacts, name, split)


@pytest.mark.slow
@pytest.mark.parametrize("name, split", SLOW, ids=lambda v: v if isinstance(v, str) else ("split" if v else "unsplit"))
def test_stagformer_parity_slow_grid(artifacts, name, split):
    check_parity(artifacts, name, split)


def check_parity(artifacts, name, split):
    ckpt, art = artifacts.get(family="stagformer", split=split, **GRID[name])
    _, model = load_checkpoint(ckpt)
    graphs = read_artifact(art).manifest["graphs"]
    expected = {f"stage.{k}" for k in range(GRID[name]["n_stacks"])} if split else {"step"}
    assert set(graphs) == {"prefill", "extend", *expected}  # extend: the blocked prefill (prefix cache)
    for schedule in ("concurrent", "sequential"):
        report = decoder_only_parity(load(art, schedule=schedule), model, ATOL, steps=64, cases=CASES)
        for case in report["cases"]:
            assert case["max_abs_logit_diff"] <= ATOL, case
            assert case["greedy_token_agreement"] == 1.0, case


def test_the_window_changes_the_model():
    """cross_window must matter, or the windowed parity test above proves nothing."""
    full = stagformer_model(n_stacks=2, n_layers=4)
    windowed = stagformer_model(n_stacks=2, n_layers=4, cross_window=1)
    windowed.load_state_dict(full.state_dict())
    ids = torch.randint(3, 48, (1, 12))
    args = (ids, torch.arange(12)[None], torch.ones_like(ids))
    with torch.inference_mode():
        assert (full(*args)[0] - windowed(*args)[0]).abs().max() > 1e-4


def test_concurrent_generate_is_thread_safe(artifacts):
    _, art = artifacts.get(family="stagformer", **GRID["p2"])
    model = load(art, schedule="concurrent")
    prompts = [[[5 + i, 6, 7]] for i in range(6)]
    serial = [model.generate(p, 16, stop_tokens=[]).tokens for p in prompts]
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(lambda p: model.generate(p, 16, stop_tokens=[]).tokens, prompts)) == serial


def test_shared_weights_are_stored_once(artifacts):
    _, shared = artifacts.get(family="stagformer", **GRID["p2-shared"])
    _, separate = artifacts.get(family="stagformer", **GRID["p2"])
    m = read_artifact(shared).manifest
    # the two stages name the shared blocks differently but point at one stored tensor
    keys0 = set(m["graphs"]["stage.0"]["initializers"].values())
    keys1 = set(m["graphs"]["stage.1"]["initializers"].values())
    assert len(keys0 & keys1) >= 4
    ratio = m["stats"]["weight_bytes"] / read_artifact(separate).manifest["stats"]["weight_bytes"]
    assert ratio < 0.75, ratio  # cross-attention and embeddings are not shared


def test_split_stage_depth_is_a_stack_not_the_model(artifacts):
    _, split = artifacts.get(family="stagformer", **GRID["p2"])
    _, unsplit = artifacts.get(family="stagformer", split=False, **GRID["p2"])
    assert read_artifact(split).manifest["stats"]["sequential_depth_per_token"] == 2
    assert read_artifact(unsplit).manifest["stats"]["sequential_depth_per_token"] == 4


def step_graph(**config):
    model = stagformer_model(**config)
    exporter = exporter_for("stagformer")
    spec = exporter.graph_specs(model.config)[1]
    return export_graph(exporter.graph_module(model, spec), spec, model.config), spec.state_owner()


def test_split_refuses_a_stack_count_that_does_not_match():
    graph, owner = step_graph(n_stacks=2, n_layers=2)
    with pytest.raises(PassError, match=r"stacks \[0, 1\] but the config says n_stacks=3"):
        SplitStagesPass(3, owner)(graph)


def test_state_ownership_is_declared_per_stack():
    _, owner = step_graph(n_stacks=3, n_layers=3)
    assert owner["past_key.0.0"] == 0 and owner["cross_value.2.0"] == 2 and owner["memory.1"] == 1
    assert "input_ids" not in owner and "attention_mask" not in owner


def test_split_refuses_a_graph_that_is_not_a_stagformer_step(artifacts):
    from conftest import red_model
    from edgeseq.exporters.red import decoder_step_spec

    model = red_model()
    spec = decoder_step_spec(model.config)
    graph = export_graph(exporter_for("red").graph_module(model, spec), spec, model.config)
    with pytest.raises(PassError, match="not a StagFormer step"):
        SplitStagesPass(2, {})(graph)


class SequentialStacks(torch.nn.Module):
    """Not staggered: stack 1 reads stack 0's output of the same step."""

    def __init__(self):
        super().__init__()
        self.stacks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))

    def forward(self, x, past_0, past_1):
        h0 = self.stacks[0](x + past_0)
        return h0, self.stacks[1](h0 + past_1)


def test_split_refuses_a_stack_reading_another_stacks_output_of_the_same_step():
    spec = GraphSpec(
        "step", "step",
        tuple(TensorSpec(n, "float32", ("batch", 8)) for n in ("x", "past_0", "past_1")),
        (TensorSpec("out_0", "float32", ("batch", 8)), TensorSpec("out_1", "float32", ("batch", 8))),
    )
    config = make_config("stagformer", "tiny")
    graph = export_graph(SequentialStacks(), spec, config)
    with pytest.raises(PassError, match="stack 1 reads stack 0's output"):
        SplitStagesPass(2, {"past_0": 0, "past_1": 1})(graph)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(cross_window=500, max_positions=128), "cross_window=500 is outside"),
        (dict(n_layers=5, n_stacks=2), "cannot be cut into n_stacks=2"),
        (dict(n_stacks=0), "n_stacks=0 must be at least 1"),
    ],
)
def test_bad_stagformer_configs_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config("stagformer", "tiny", overrides)


def test_recurrent_decoding_matches_pytorch_by_generation(artifacts):
    """Teacher forcing cannot tell recurrent decoding apart, so compare whole generations."""
    ckpt, art = artifacts.get(family="stagformer", **GRID["p2-shared"])
    _, model = load_checkpoint(ckpt)
    runtime = load(art, schedule="recurrent")
    normal = load(art).generate([[5, 6, 7, 8]], 24, stop_tokens=[]).tokens
    for prompt in ([5, 6, 7, 8], [9], list(range(3, 40))):
        result = runtime.generate([prompt], 24, stop_tokens=[], return_logits=True)
        tokens, logits = model.generate_recurrent(torch.tensor([prompt]), 24)
        assert result.tokens[0] == tokens[0].tolist()
        assert (torch.from_numpy(np.stack(result.logits, 1)) - logits).abs().max() <= ATOL
    recurrent = runtime.generate([[5, 6, 7, 8]], 24, stop_tokens=[]).tokens
    assert recurrent != normal  # it is a different decoding, not the staggered one renamed


def test_recurrent_decoding_needs_shared_weights_and_a_split(artifacts):
    from edgeseq.errors import LoadError

    _, separate = artifacts.get(family="stagformer", **GRID["p2"])
    with pytest.raises(LoadError, match="needs a model with shared_weights=true"):
        load(separate, schedule="recurrent")
    _, unsplit = artifacts.get(family="stagformer", split=False, **GRID["p2-shared"])
    with pytest.raises(LoadError, match="needs a split artifact"):
        load(unsplit, schedule="recurrent")


def test_an_uneven_split_gives_each_stage_its_own_depth(artifacts):
    _, art = artifacts.get(family="stagformer", n_stacks=2, n_layers=4, stack_layers="3,1")
    manifest = read_artifact(art).manifest
    caches = {g: sum(t["role"] == "cache" and t["name"].startswith("past_key.") for t in manifest["graphs"][g]["inputs"])
              for g in ("stage.0", "stage.1")}
    assert caches == {"stage.0": 3, "stage.1": 1}
    assert manifest["stats"]["sequential_depth_per_token"] == 3


@pytest.mark.parametrize("sets, message", [
    ({"stack_layers": "3,2"}, "does not cut n_layers=4"),
    ({"stack_layers": "4,0"}, "at least one layer"),
    ({"stack_layers": "two,two"}, "not a comma-separated list"),
    ({"stack_layers": "3,1", "shared_weights": True}, "shared_weights=true needs stacks of equal depth"),
])
def test_bad_stack_layers_say_what_to_write(sets, message):
    with pytest.raises(ConfigError, match=message):
        make_config("stagformer", "tiny", {"n_stacks": 2, "n_layers": 4, **sets})
