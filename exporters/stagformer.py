"""StagFormer -> ONNX: a prefill graph, an extend graph, and ONE decode step of all stacks in a single graph.

The extend graph continues a prompt by a block of tokens over caches given at their exact
length: the runtime prefills every prompt block by block (prefill for the first, extend for
the rest), so a block computed now and one restored from the prefix cache hold the same
bits (runtimes/prefix_cache.py).

The step graph's nodes carry the exporter's `name_scopes` metadata, which names the
stack each node came from (`stacks.k`); passes/split_stages.py uses it to cut the graph
into one subgraph per stack. Each stack's inputs are its own caches and, for k > 1, the
`memory.k` handoff (stack k-1's output from the previous step); nothing else crosses.
"""

import torch

from edgeseq.graph_spec import PREFIX_BLOCK, GraphSpec, TensorSpec

from .base import FamilyExporter
from .red import kv_pair


def _caches(prefix: str, cross_prefix: str, length, cross_length, c, **wiring) -> tuple[TensorSpec, ...]:
    """Per stack: its self caches, then (k > 0) its cross caches over stack k-1's outputs.

    `wiring` maps a field to (self value, cross value); the StagFormer names: past_key.k.l,
    cross_key.k.l (inputs), new_key.k.l, cross_new_key.k.l (step), present_key.k.l,
    cross_present_key.k.l (prefill)."""
    h, dh = c.n_heads, c.d_model // c.n_heads
    out = []
    for k in range(c.n_stacks):
        own = {key: v[0] for key, v in wiring.items()}
        out += [t for i in range(c.layers_in(k)) for t in kv_pair(prefix, f"{k}.{i}", h, length, dh, **own)]
        if k > 0:
            cross = {key: v[1] for key, v in wiring.items()}
            out += [t for i in range(c.layers_in(k)) for t in kv_pair(cross_prefix, f"{k}.{i}", h, cross_length, dh, **cross)]
    return tuple(_owned(t) for t in out)


def _owned(t: TensorSpec) -> TensorSpec:
    """Tag a stack's own tensor (`name.k.l`: its caches and their new entries) with its stack,
    for the stage split."""
    from dataclasses import replace

    return replace(t, stack=int(t.name.split(".")[1])) if t.role in ("cache", "new_cache") else t


def _handoffs(prefix: str, c, stacks, role: str = "handoff") -> tuple[TensorSpec, ...]:
    """Stack k-1's output from the previous step feeds stack k's `memory.k` (a step input)."""
    return tuple(
        TensorSpec(f"{prefix}.{k}", "float32", ("batch", 1, c.d_model), role=role,
                   source=f"handoff.{k - 1}" if prefix == "memory" else None, stack=k)
        for k in stacks
    )


def step_spec(c) -> GraphSpec:
    """One new token per row, every stack, against preallocated caches that are only read:
    the step returns the new keys/values (self: at slot cache_length; cross: stack k-1's
    previous output, at slot cache_length-1) and each stack's output for the next step."""
    return GraphSpec(
        name="step",
        role="step",
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", 1), "token_ids", role="token_ids"),
            TensorSpec("positions", "int64", ("batch", 1), "positions", role="positions"),
            TensorSpec("cache_length", "int64", ("batch",), "lengths", role="cache_length"),
            *_caches("past", "cross", "cache", "cache", c, role=("cache", "cache"), source=("new", "cross_new"),
                     init=("present", "cross_present"), lag=(0, 1)),
            *_handoffs("memory", c, range(1, c.n_stacks)),
        ),
        outputs=(
            TensorSpec("logits", "float32", ("batch", 1, c.vocab_size), role="logits"),
            *_caches("new", "cross_new", 1, 1, c, role=("new_cache", "new_cache")),
            *_handoffs("handoff", c, range(c.n_stacks)),
        ),
    )


def prefill_spec(c) -> GraphSpec:
    return GraphSpec(
        name="prefill",
        role="prefill",
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "prompt"), "token_ids", role="token_ids"),
            TensorSpec("positions", "int64", ("batch", "prompt"), "positions", role="positions"),
            TensorSpec("attention_mask", "int64", ("batch", "prompt"), "mask", role="mask"),
        ),
        outputs=(
            TensorSpec("logits", "float32", ("batch", "prompt", c.vocab_size), role="logits"),
            *_caches("present", "cross_present", "prompt", "prompt-1", c, role=("cache", "cache")),
            *_handoffs("handoff", c, range(c.n_stacks)),
        ),
    )


def extend_spec(c) -> GraphSpec:
    """A block of new tokens after P >= 1 prompt tokens: the caches' inputs have the step's
    names (the runtime feeds each from its buffer, cut to the row's exact length), and each
    names (`source`) the output holding its entries for the block."""
    return GraphSpec(
        name="extend",
        role="extend",
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "new"), "token_ids", role="token_ids"),
            TensorSpec("positions", "int64", ("batch", "new"), "positions", role="positions"),
            *_caches("past", "cross", "history+1", "history", c, role=("cache", "cache"),
                     source=("chunk", "cross_chunk")),
            *_handoffs("memory", c, range(1, c.n_stacks)),
        ),
        outputs=(
            TensorSpec("logits", "float32", ("batch", 1, c.vocab_size), role="logits"),
            *_caches("chunk", "cross_chunk", "new", "new", c, role=("new_cache", "new_cache")),
            *_handoffs("handoff", c, range(c.n_stacks)),
        ),
    )


def _flatten(caches, cross_caches):
    out = []
    for k, presents in enumerate(caches):
        out += [t for kv in presents for t in kv]
        if k > 0:
            out += [t for kv in cross_caches[k] for t in kv]
    return out


def _unflatten(c, flat: list) -> tuple[list, list, list]:
    """The graph inputs after ids and positions, in `_caches` order, back into per-stack
    self caches, cross caches (None for stack 0) and the memories memory.1 .. memory.{p-1}."""

    def take_kv(n: int):
        pairs = [(flat[2 * i], flat[2 * i + 1]) for i in range(n)]
        del flat[: 2 * n]
        return pairs

    caches, cross_caches = [], [None]
    for k in range(c.n_stacks):
        caches.append(take_kv(c.layers_in(k)))
        if k > 0:
            cross_caches.append(take_kv(c.layers_in(k)))
    return caches, cross_caches, flat


class StagFormerPrefillGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, positions, attention_mask):
        logits, caches, cross_caches, handoffs = self.model(input_ids, positions, attention_mask)
        return (logits, *_flatten(caches, cross_caches), *handoffs)


class StagFormerStepGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, positions, cache_length, *flat):
        c = self.model.config
        caches, cross_caches, memories = _unflatten(c, list(flat))
        logits, new_caches, new_cross, outs = self.model.step_cached(
            input_ids, positions, cache_length, caches, cross_caches, memories
        )
        ordered = range(c.n_stacks)
        return (logits, *_flatten([new_caches[k] for k in ordered], [new_cross[k] for k in ordered]),
                *(outs[k] for k in ordered))


class StagFormerExtendGraph(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, positions, *flat):
        c = self.model.config
        caches, cross_caches, memories = _unflatten(c, list(flat))
        logits, new_caches, new_cross, handoffs = self.model.extend(input_ids, positions, caches, cross_caches, memories)
        return (logits, *_flatten(new_caches, new_cross), *handoffs)


class StagFormerExporter(FamilyExporter):
    def __init__(self, family: str = "stagformer"):
        # PASTA's models are StagFormers: the same graphs, under the "pasta" family name
        super().__init__(family=family, atol=1e-4)

    def graph_specs(self, config) -> list[GraphSpec]:
        return [prefill_spec(config), extend_spec(config), step_spec(config)]

    def graph_module(self, model, spec):
        return {"prefill": StagFormerPrefillGraph, "extend": StagFormerExtendGraph,
                "step": StagFormerStepGraph}[spec.role](model)

    def sequential_depth_per_token(self, config, split: bool) -> int:
        # split: the stacks of one step run side by side; one graph runs them in turn
        return max(config.stack_sizes) if split else config.n_layers

    def decode(self, config, split: bool) -> dict:
        step = [f"stage.{k}" for k in range(config.n_stacks)] if split else ["step"]
        return {"shape": "decoder_only", "once": "prefill", "extend": "extend", "prefix_block": PREFIX_BLOCK,
                "step": step}

    def schedule(self, config, split: bool) -> list[dict]:
        decode = (
            {"stage": "decode", "graphs": [f"stage.{k}" for k in range(config.n_stacks)],
             "runs": "once per generated token, stages concurrently"}
            if split else {"stage": "decode", "graphs": ["step"], "runs": "once per generated token"}
        )
        handoffs = [
            {"from": f"stage.{k}" if split else "step", "output": f"handoff.{k}",
             "to": f"stage.{k + 1}" if split else "step", "input": f"memory.{k + 1}", "when": "next step"}
            for k in range(config.n_stacks - 1)
        ]
        prefill = {"stage": "prefill", "graphs": ["prefill", "extend"],
                   "runs": f"once per request: prefill the first {PREFIX_BLOCK} prompt tokens, extend each further block"}
        return [prefill, {**decode, "handoffs": handoffs}]
