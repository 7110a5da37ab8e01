"""The README's top is the index notebook's text, and the index shows the demo's committed numbers."""
import json
from pathlib import Path

from sre2l.cli import README_MARKER, demo_summary, readme_from_index

ROOT = Path(__file__).resolve().parents[1]


def test_readme_top_is_written_from_the_index_notebook():
    readme = (ROOT / "README.md").read_text()
    assert README_MARKER in readme, "run `sre2l readme`"
    top = readme.split(README_MARKER, 1)[0] + README_MARKER + "\n"
    assert top == readme_from_index(ROOT / "nbs" / "index.ipynb"), "README.md's top is stale: run `sre2l readme`"


def test_the_index_shows_the_demo_table_that_the_demo_wrote():
    cells = json.loads((ROOT / "nbs" / "index.ipynb").read_text())["cells"]
    shown = ["".join(o["data"]["text/markdown"]) for c in cells for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert shown == [demo_summary(ROOT / "figures" / "tables" / "demo")], "execute nbs/index.ipynb again, then `sre2l readme`"
    results = json.loads((ROOT / "figures" / "tables" / "demo" / "results.json").read_text())
    for cell in results["cells"]:  # every measured number of the demo's results appears, as the table prints it
        assert f"| {cell['measured']:.2f} |" in shown[0]
