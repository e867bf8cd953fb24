"""The passes' contracts as code, and what a pass says about the candidates it declined.

onnx-ir calls `requires(model)` before a pass and `ensures(model)` after it (PassBase.__call__);
ours raise onnx-ir's PreconditionError / PostconditionError naming what broke and where.
`ContractPass` is the base of edgeseq's in-place passes:
- the one shared check of a fusion: the graph's inputs and outputs (names, element types,
  shapes) are the same after the pass as before it (`keeps_interface`; a pass that removes
  inputs on purpose, the pruned-unit strip, turns it off and checks its own);
- `rewrote` counts what it changed per graph, and `decline(node, reason)` records each
  candidate it left alone and why, as onnxscript's `MatchResult.fail` does, so a fusion
  that silently stops firing shows in `edgeseq compile --explain`.
"""

from collections import Counter
from dataclasses import dataclass

import onnx_ir as ir

from edgeseq.errors import PassError

BUG = "this is an edgeseq bug: report it with the checkpoint config"


class PreconditionBroken(PassError, ir.passes.PreconditionError):
    """onnx-ir's PreconditionError that is also edgeseq's PassError (one line, with the fix)."""


class PostconditionBroken(PassError, ir.passes.PostconditionError):
    """onnx-ir's PostconditionError that is also edgeseq's PassError."""


def precondition(problem: str, fix: str = BUG) -> PreconditionBroken:
    return PreconditionBroken(problem, fix)


def postcondition(problem: str, fix: str = BUG) -> PostconditionBroken:
    return PostconditionBroken(problem, fix)


def interface(model: ir.Model) -> list[tuple[str, str, str, str]]:
    """(kind, name, element type, shape) of every graph input and output, in order."""
    return [(kind, v.name or "", str(v.type), str(v.shape))
            for kind, values in (("input", model.graph.inputs), ("output", model.graph.outputs)) for v in values]


def interface_change(before: list[tuple], after: list[tuple]) -> str | None:
    """A one-line account of how two interfaces differ, or None when they are equal."""
    if before == after:
        return None
    lost = [f"{k} {n} {t} {s}" for k, n, t, s in before if (k, n, t, s) not in after]
    gained = [f"{k} {n} {t} {s}" for k, n, t, s in after if (k, n, t, s) not in before]
    if not lost and not gained:
        return "the inputs or outputs changed order"
    return "; ".join(part for part in (f"lost {', '.join(lost[:3])}" if lost else "",
                                       f"gained {', '.join(gained[:3])}" if gained else "") if part)


@dataclass(frozen=True)
class Declined:
    graph: str
    node: str
    reason: str


class ContractPass(ir.passes.InPlacePass):
    keeps_interface = True

    def __init__(self):
        super().__init__()
        self.graph_name = ""  # the graph being rewritten (set by the pipeline; for messages)
        self.graph_role = ""  # its runtime role (graph_spec GraphSpec.role; "" outside a pipeline)
        self.rewrote: Counter[str] = Counter()
        self.declined: list[Declined] = []
        self._interfaces: dict[int, list[tuple]] = {}

    def requires(self, model: ir.Model) -> None:
        if self.keeps_interface:
            self._interfaces[id(model)] = interface(model)

    def ensures(self, model: ir.Model) -> None:
        before = self._interfaces.pop(id(model), None)
        if self.keeps_interface and before is not None:
            change = interface_change(before, interface(model))
            if change:
                raise postcondition(f"{type(self).__name__} changed the graph's interface: {change}")

    def count(self, n: int = 1) -> None:
        self.rewrote[self.graph_name] += n

    def decline(self, node: ir.Node | str, reason: str) -> bool:
        """Record a candidate (a node, or a name) left alone; returns False, so a matcher can
        `return self.decline(...)`."""
        name = node if isinstance(node, str) else (node.name or node.op_type)
        self.declined.append(Declined(self.graph_name, name, reason))
        return False
