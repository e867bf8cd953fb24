"""benchmarks/plot.py draws the four README charts from the committed results JSON."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_charts_are_drawn_from_the_committed_results(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("roofline.png", "clients.png", "positions.png", "pasta.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name  # a drawn chart, not an empty canvas
        assert f"docs/images/{name}" in (ROOT / "README.md").read_text()  # and the README shows it
