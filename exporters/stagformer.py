"""StagFormer -> ONNX: a prefill graph and ONE decode step of all stacks in a single graph.

The step graph's nodes carry the exporter's `name_scopes` metadata, which names the
stack each node came from (`stacks.k`); passes/split_stages.py uses it to cut the graph
into one subgraph per stack. Each stack's inputs are its own caches and, for k > 1, the
`memory.k` handoff (stack k-1's output from the previous step); nothing else crosses.
"""

import torch

from .base import FamilyExporter, GraphSpec, TensorSpec


def _kv(prefix: str, k: int, layer: int, length, c) -> tuple[TensorSpec, TensorSpec]:
    dims = ("batch", c.n_heads, length, c.d_model // c.n_heads)
    return (
        TensorSpec(f"{prefix}_key.{k}.{layer}", "float32", dims),
        TensorSpec(f"{prefix}_value.{k}.{layer}", "float32", dims),
    )


def _caches(prefix: str, cross_prefix: str, self_len, cross_len, c) -> tuple[TensorSpec, ...]:
    """Per stack: its self caches, then (k > 0) its cross caches."""
    out = []
    for k in range(c.n_stacks):
        out += [t for i in range(c.layers_per_stack) for t in _kv(prefix, k, i, self_len, c)]
        if k > 0:
            out += [t for i in range(c.layers_per_stack) for t in _kv(cross_prefix, k, i, cross_len, c)]
    return tuple(out)


def _handoffs(prefix: str, c, stacks) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(f"{prefix}.{k}", "float32", ("batch", 1, c.d_model)) for k in stacks)


def stack_state_inputs(spec: GraphSpec) -> dict[str, int]:
    """Step inputs that are one stack's state: `past_*.k.l`, `cross_*.k.l` and `memory.k` -> k."""
    owner = {}
    for t in spec.inputs:
        parts = t.name.split(".")
        if t.name.startswith(("past_", "cross_")) and len(parts) == 3:
            owner[t.name] = int(parts[1])
        elif parts[0] == "memory":
            owner[t.name] = int(parts[1])
    return owner


def step_spec(c) -> GraphSpec:
    # with p > 1 the cross cache ("history") lags the self cache by one slot; torch.export
    # needs that relation spelled out, so the other lengths derive from it
    past, total, history = ("history+1", "history+2", "history") if c.n_stacks > 1 else ("past", "past+1", None)
    return GraphSpec(
        name="step",
        role="step",
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", 1), "token_ids"),
            TensorSpec("positions", "int64", ("batch", 1), "positions"),
            TensorSpec("attention_mask", "int64", ("batch", total), "mask"),
            *_caches("past", "cross", past, history, c),
            *_handoffs("memory", c, range(1, c.n_stacks)),
        ),
        outputs=(
            TensorSpec("logits", "float32", ("batch", 1, c.vocab_size)),
            *_caches("present", "cross_present", total, "history+1", c),
            *_handoffs("handoff", c, range(c.n_stacks)),
        ),
    )


def prefill_spec(c) -> GraphSpec:
    return GraphSpec(
        name="prefill",
        role="prefill",
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "prompt"), "token_ids"),
            TensorSpec("positions", "int64", ("batch", "prompt"), "positions"),
            TensorSpec("attention_mask", "int64", ("batch", "prompt"), "mask"),
        ),
        outputs=(
            TensorSpec("logits", "float32", ("batch", "prompt", c.vocab_size)),
            *_caches("present", "cross_present", "prompt", "prompt-1", c),
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

    def forward(self, input_ids, positions, attention_mask, *flat):
        c = self.model.config
        n = c.layers_per_stack
        flat = list(flat)

        def take_kv():
            pairs = [(flat[2 * i], flat[2 * i + 1]) for i in range(n)]
            del flat[: 2 * n]
            return pairs

        caches, cross_caches = [], [None]
        for k in range(c.n_stacks):
            caches.append(take_kv())
            if k > 0:
                cross_caches.append(take_kv())
        memories = flat  # memory.1 .. memory.{p-1}
        logits, caches, cross_caches, handoffs = self.model.step(
            input_ids, positions, attention_mask, caches, cross_caches, memories
        )
        return (logits, *_flatten(caches, cross_caches), *handoffs)


class StagFormerExporter(FamilyExporter):
    def __init__(self):
        super().__init__(family="stagformer", atol=1e-4)

    def graph_specs(self, config) -> list[GraphSpec]:
        return [prefill_spec(config), step_spec(config)]

    def graph_module(self, model, spec):
        return {"prefill": StagFormerPrefillGraph, "step": StagFormerStepGraph}[spec.role](model)

    def sequential_depth_per_token(self, config, split: bool) -> int:
        # split: the stacks of one step run side by side; one graph runs them in turn
        return config.layers_per_stack if split else config.n_layers

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
        return [{"stage": "prefill", "graphs": ["prefill"], "runs": "once per request"}, {**decode, "handoffs": handoffs}]
