"""The layout's rules: the driver and the runtime never branch on a family's name, and the
torch-free parts (passes/, runtimes/) import no torch."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from edgeseq.families import FAMILIES

ROOT = Path(__file__).parent.parent
REGISTRY = "edgeseq/families/"  # where a family's name may be spelled out: its record


def branch_pattern(names) -> re.Pattern:
    """The forms a family dispatch takes: comparing a family name, testing a name's membership
    (`"pasta" in manifest`), checking a family's type, or probing for what one family's object
    lacks. The names are the registry's."""
    alternatives = "|".join(sorted(names))
    return re.compile("|".join([
        r"family\s*(==|!=)", r"family\s+(not\s+)?in\s*[(\[{]", rf"(==|!=)\s*[\"']({alternatives})[\"']",
        rf"[\"']({alternatives})[\"']\s+(not\s+)?in\b", r"isinstance\([^)]*(Pasta|Nash|Red|StagFormer)\w*",
        r"hasattr\(\s*model\s*,",
    ]))


def family_branches(files: dict[str, str], names=FAMILIES) -> list[str]:
    branch = branch_pattern(names)
    return [f"{name}:{i}" for name, text in files.items() if not name.startswith(REGISTRY)
            for i, line in enumerate(text.splitlines(), 1) if branch.search(line)]


def test_no_family_name_branches_in_the_driver_or_the_runtime():
    files = {str(path.relative_to(ROOT)): path.read_text() for folder in ("edgeseq", "runtimes")
             for path in (ROOT / folder).rglob("*.py")}
    hits = family_branches(files)
    assert hits == [], f"family dispatch outside the registry (use edgeseq/families/ or the manifest's wiring): {hits}"


def test_the_guard_catches_every_form_of_family_dispatch():
    planted = ["if isinstance(model, PastaModel):", 'if "pasta" in artifact.manifest:', "if family == 'nash':",
               'if manifest["family"] != "red":', "if family in ('red', 'pasta'):", 'if not hasattr(model, "scheduler"):',
               "elif 'stagformer' not in report:"]
    for line in planted:
        assert family_branches({"edgeseq/x.py": line}) == ["edgeseq/x.py:1"], line
    assert family_branches({"edgeseq/families/pasta/__init__.py": planted[0]}) == []  # a record itself may
    # a newly registered family's name is guarded too, without editing this test
    assert family_branches({"runtimes/x.py": 'if kind == "whisper":'}) == []
    assert family_branches({"runtimes/x.py": 'if kind == "whisper":'}, names=[*FAMILIES, "whisper"]) == ["runtimes/x.py:1"]
    assert family_branches({"runtimes/x.py": "decoding = decoding_for(artifact)\nif record.bench is not None:"}) == []


def test_passes_import_no_torch():
    script = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers") or name.startswith(("edgeseq.models", "edgeseq.exporters")):
                    raise ImportError(f"blocked import: {name}")
        sys.meta_path.insert(0, Block())
        import edgeseq.passes
        from edgeseq.passes import fuse_attention, fuse_residual_norm, split_stages, strip_pruned
        assert not any(k == "torch" or k.startswith("torch.") for k in sys.modules)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_design_citations_point_at_sections_of_docs_design_md():
    design = (ROOT / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^## §(\d+)", design, re.M))
    cited, outside = set(), []
    for folder in ("edgeseq", "runtimes", "models", "exporters", "passes", "tests", "benchmarks", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            cited |= set(re.findall(r"docs/design\.md §(\d+)", text))
            if re.search(r"DESIGN(\.md)? §", text):
                outside.append(str(path.relative_to(ROOT)))
    assert outside == [], f"citations of a design file outside the repo: {outside}"
    assert cited and cited <= sections, f"cited sections missing from docs/design.md: {sorted(cited - sections)}"


def test_the_readme_links_into_the_docs_site_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert any(link.startswith("docs/") for link in links)
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert missing == [], f"README links to files that do not exist: {missing}"


def _imports(path: Path, package: str) -> set[str]:
    """Every module an edgeseq/ file imports, at its top or inside a function."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out |= {module, *(f"{module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return cycles


def test_no_import_circle_among_the_driver_modules():
    graph = {}
    for path in (ROOT / "edgeseq").rglob("*.py"):
        parts = ["edgeseq", *path.relative_to(ROOT / "edgeseq").with_suffix("").parts]
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = _imports(path, name if path.name == "__init__.py" else name.rsplit(".", 1)[0])
    graph = {k: {d for d in deps if d in graph and d != k} for k, deps in graph.items()}
    assert "edgeseq.families" in graph and graph["edgeseq.cli"]  # the walk sees the modules and their imports
    assert import_cycles(graph) == []
    planted = {**graph, "edgeseq.parity": graph["edgeseq.parity"] | {"edgeseq.families"},
               "edgeseq.families": graph["edgeseq.families"] | {"edgeseq.parity"}}
    assert import_cycles(planted)  # the check finds one when there is one
