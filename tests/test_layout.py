"""The layout's rules: the driver and the runtime never branch on a family's name, and the
torch-free parts (passes/, runtimes/) import no torch."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_no_family_name_branches_in_the_driver_or_the_runtime():
    pattern = re.compile(r"family\s*(==|!=)|family in \(")
    hits = [f"{path.relative_to(ROOT)}:{i}" for folder in ("edgeseq", "runtimes") for path in (ROOT / folder).rglob("*.py")
            for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == [], f"family-name branches (use edgeseq/families.py or the manifest): {hits}"


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
