"""The StagFormer decode loop: prefill once, then one step per token whose stages run concurrently.

Each stage (one stack's subgraph) has its own ONNX Runtime session and, under the
`concurrent` schedule, a long-lived worker thread; the calling thread runs the last
stage itself, so a step costs one hand-off per extra stage. ORT releases the GIL while
it runs, and the intra-op threads are split between the stages. Only caches cross from
one step to the next: stack k's output (`handoff.k`) becomes stack k+1's `memory`.

Under the `recurrent` schedule (shared-weight models) each step runs the last stage
only, and its own output, not the previous stack's, becomes its next memory.

Batches are left-padded: an attention mask marks real cache slots and every row keeps
its own positions. Each call holds its own state, so `generate` is thread-safe.
"""

import os
import queue
import threading
from concurrent.futures import Future

import numpy as np

from edgeseq.errors import GenerateError, LoadError

from .artifact import Artifact
from .decoding import Decoding, GenerateResult
from .ort_backend import OrtBackend
from .sampling import SamplingOptions

SCHEDULES = ("concurrent", "sequential", "recurrent")


def next_input_name(output: str, recurrent_stack: int | None = None) -> str | None:
    """Which step input an output feeds on the next step (None: not fed back).

    Stack k's handoff feeds stack k+1's memory; under recurrent decoding the last stack's
    handoff feeds its own memory instead.
    """
    if output.startswith("present_"):
        return "past_" + output[len("present_"):]
    if output.startswith("cross_present_"):
        return "cross_" + output[len("cross_present_"):]
    if output.startswith("handoff."):
        k = int(output.split(".")[1])
        if recurrent_stack is not None:
            return f"memory.{k}" if k == recurrent_stack else None
        return f"memory.{k + 1}"
    return None


class StageWorker:
    """A daemon thread that runs one graph's session for whoever submits feeds."""

    def __init__(self, backend: OrtBackend, graph: str):
        self.backend = backend
        self.graph = graph
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=f"edgeseq-{graph}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            feeds, future = self.jobs.get()
            try:
                future.set_result(self.backend.run(self.graph, feeds))
            except BaseException as e:  # handed to the caller, which re-raises
                future.set_exception(e)

    def submit(self, feeds: dict) -> Future:
        future: Future = Future()
        self.jobs.put((feeds, future))
        return future


class StaggeredDecoderModel:
    """A loaded StagFormer artifact (split into stages, or one step graph)."""

    def __init__(self, artifact: Artifact, target: str = "ort-cpu", threads: int | None = None,
                 schedule: str = "concurrent", low_memory: bool = False):
        if schedule not in SCHEDULES:
            raise LoadError(f"unknown schedule {schedule!r}", f"choose one of: {', '.join(SCHEDULES)}")
        graphs = artifact.manifest["graphs"]
        c = artifact.config
        self.stages = sorted((n for n, g in graphs.items() if g["role"] == "stage"), key=lambda n: int(n.split(".")[1]))
        self.step_graphs = self.stages or [artifact.graph("step")["name"]]
        self.recurrent_stack = None
        if schedule == "recurrent":
            if not c["shared_weights"] or c["n_stacks"] < 2:
                raise LoadError("recurrent decoding needs a model with shared_weights=true and n_stacks >= 2",
                                "use --schedule concurrent or sequential")
            if not self.stages:
                raise LoadError("recurrent decoding needs a split artifact (one graph per stack)",
                                "recompile without --no-split")
            # one pass of the last stack per token, reading its own earlier outputs
            self.recurrent_stack = c["n_stacks"] - 1
            self.step_graphs = [self.stages[-1]]
            foreign = [t["name"] for t in graphs[self.stages[-1]]["inputs"]
                       if t["name"].count(".") == 2 and int(t["name"].split(".")[1]) != self.recurrent_stack]
            if foreign:  # its caches would go stale: only the last stage runs
                raise LoadError(f"the last stage reads other stacks' caches ({', '.join(foreign[:2])})",
                                "recompile the artifact with this edgeseq version")
        self.concurrent = schedule == "concurrent" and len(self.step_graphs) > 1
        total = threads or os.cpu_count() or 1
        per_stage = max(1, total // len(self.step_graphs)) if self.concurrent else total
        self.backend = OrtBackend(
            artifact, target, threads=total, threads_per_graph={g: per_stage for g in self.step_graphs},
            low_memory=low_memory,
        )
        self.artifact = artifact
        self.config = artifact.config
        self.schedule = schedule
        self.inputs = {name: [t["name"] for t in g["inputs"]] for name, g in graphs.items()}
        self.outputs = {name: [t["name"] for t in g["outputs"]] for name, g in graphs.items()}
        self.workers = [StageWorker(self.backend, g) for g in self.step_graphs[:-1]] if self.concurrent else []

    def _run_step(self, state: dict) -> dict:
        """Run every step graph on `state`; returns their outputs by name."""
        feeds = [{n: state[n] for n in self.inputs[g]} for g in self.step_graphs]
        if self.concurrent:
            futures = [w.submit(f) for w, f in zip(self.workers, feeds)]
            results = [None] * len(futures) + [self.backend.run(self.step_graphs[-1], feeds[-1])]
            results[: len(futures)] = [f.result() for f in futures]
        else:
            results = [self.backend.run(g, f) for g, f in zip(self.step_graphs, feeds)]
        named = {}
        for g, values in zip(self.step_graphs, results):
            named.update(zip(self.outputs[g], values))
        return named

    def prefill(self, rows: list[list[int]]):
        """Left-pad, run the prefill graph; returns (outputs by name, mask, last positions)."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.config["pad_token_id"], dtype=np.int64)
        mask = np.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, width - len(r):] = r
            mask[b, width - len(r):] = 1
        positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
        values = self.backend.run("prefill", {"input_ids": ids, "positions": positions, "attention_mask": mask})
        return dict(zip(self.outputs["prefill"], values)), mask, positions[:, -1:]

    def generate(
        self,
        input_ids,
        max_new_tokens: int = 32,
        stop_tokens: list[int] | None = None,
        sampling: SamplingOptions | None = None,
        return_logits: bool = False,
    ) -> GenerateResult:
        """Continue each prompt row by up to `max_new_tokens` (rows stop independently)."""
        d = Decoding(input_ids, self.config, max_new_tokens, stop_tokens, sampling, return_logits)
        c = self.config
        longest = max(len(r) for r in d.rows)
        if longest + max_new_tokens > c["max_positions"]:
            raise GenerateError(
                f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds max_positions={c['max_positions']}",
                f"lower --max-new-tokens to {max(c['max_positions'] - longest, 0)} or shorten the prompt",
            )
        outputs, mask, positions = self.prefill(d.rows)
        batch = len(d.rows)
        state: dict = {}
        for step in range(max_new_tokens):
            next_ids = d.choose(outputs["logits"].numpy()[:, -1])
            if d.finished or step == max_new_tokens - 1:
                break
            for name, value in outputs.items():
                target = next_input_name(name, self.recurrent_stack)
                if target:
                    state[target] = value
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            positions = positions + 1
            state.update(input_ids=next_ids[:, None], positions=positions, attention_mask=mask)
            outputs = self._run_step(state)
        return d.result
