"""Notebooks are the single source: the package matches them, they are clean, they run, papermill can drive them."""
import filecmp
import json

import pytest

from conftest import ROOT, run, tool

STAGE_NOTEBOOKS = ["01_squeeze.ipynb", "02_recover.ipynb", "03_relabel.ipynb", "04_validate.ipynb"]


def test_package_is_exported_from_notebooks(repo_copy):
    result = run([tool("nbdev_export")], cwd=repo_copy)
    assert result.returncode == 0, result.stderr
    modules = sorted(p.name for p in (ROOT / "sre2l").glob("*.py"))
    assert sorted(p.name for p in (repo_copy / "sre2l").glob("*.py")) == modules
    _, mismatch, errors = filecmp.cmpfiles(ROOT / "sre2l", repo_copy / "sre2l", modules, shallow=False)
    assert not mismatch and not errors, f"sre2l/ is out of sync with nbs/ (run nbdev_export): {mismatch + errors}"


def test_notebooks_are_clean(repo_copy):
    result = run([tool("nbdev_clean")], cwd=repo_copy)
    assert result.returncode == 0, result.stderr
    notebooks = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))
    _, changed, errors = filecmp.cmpfiles(ROOT / "nbs", repo_copy / "nbs", notebooks, shallow=False)
    assert not changed and not errors, f"notebooks not clean (run nbdev_clean): {changed + errors}"


@pytest.mark.parametrize("name", STAGE_NOTEBOOKS)
def test_stage_notebook_has_one_literal_parameters_cell(name):
    papermill = pytest.importorskip("papermill")
    notebook = json.loads((ROOT / "nbs" / name).read_text())
    tagged = [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"{name}: {len(tagged)} cells tagged parameters"
    assert "#| export" not in "".join(tagged[0]["source"])
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    inferred = papermill.inspect_notebook(str(ROOT / "nbs" / name))
    extra = {"04_validate.ipynb": {"pruning_ratios"}}.get(name, set())  # the curve's points (sre2l reproduce passes [])
    assert set(inferred) == {"preset", "run_dir", "overrides"} | extra
    assert all(p["help"] for p in inferred.values()), "every parameter needs a docments comment"


def test_committed_outputs_are_fresh():
    "`sre2l lessons --check`: every notebook re-executed in a fresh copy shows what is committed."
    # no time limit a slow machine could hit: one hour only catches a hang (about 6 minutes on 2 cores)
    result = run([tool("sre2l"), "lessons", "--check"], cwd=ROOT, timeout=3600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert "every notebook's committed outputs are fresh" in result.stdout


def test_notebooks_are_committed_executed_and_small():
    notebooks = sorted((ROOT / "nbs").glob("*.ipynb"))
    total = sum(p.stat().st_size for p in notebooks)
    print(f"{len(notebooks)} notebooks, {total / 1e6:.1f} MB")
    assert total < 10e6, f"the notebooks hold {total / 1e6:.1f} MB; keep figures small (at most 10 MB in all)"
    for path in notebooks:
        nb = json.loads(path.read_text())
        meta = nb["metadata"].get("sre2l", {})
        assert meta.get("executed_on") and meta.get("environment", {}).get("numpy"), f"{path.name}: not executed by `sre2l lessons`"
        assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), f"{path.name}: no outputs"


def exported_cells():
    "(notebook, source) of every exported cell."
    for path in sorted((ROOT / "nbs").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and source.startswith("#| export"): yield path.name, source


def test_exported_cells_are_small_and_hold_one_definition():
    import ast
    import statistics
    sizes, several = [], []
    for name, source in exported_cells():
        sizes.append(len(source.splitlines()) - 1)  # the directive line aside
        tree = ast.parse(source)
        defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        if len(defs) > 1: several.append(f"{name}: {', '.join(defs)}")
    sizes.sort()
    median, p90 = statistics.median(sizes), sizes[int(0.9 * (len(sizes) - 1))]
    print(f"{len(sizes)} exported cells: median {median} lines, p90 {p90}, largest {sizes[-1]}")
    assert median <= 12 and p90 <= 30, (median, p90)
    assert not several, f"cells with several definitions: {several[:5]}"


def test_papermill_takes_configuration_keys_as_parameters(tmp_path):
    papermill = pytest.importorskip("papermill")
    run_dir = tmp_path / "run"
    papermill.execute_notebook(str(ROOT / "nbs" / "03_relabel.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               parameters=dict(run_dir=str(run_dir), ipc=2, iterations=3, squeeze__epochs=1,
                                               relabel__epochs=4, prune_ratio=0.5, overrides=["device=cpu"]),
                               cwd=str(ROOT / "nbs"), progress_bar=False)
    manifest = json.loads((run_dir / "relabel" / "manifest.json").read_text())
    assert manifest["prune_ratio"] == 0.5 and manifest["stored_batches"] == 2 and manifest["images"] == 20
    assert manifest["config"]["squeeze"]["epochs"] == 1 and manifest["config"]["recover"]["iterations"] == 3


def test_offline_site_renders_the_lessons_with_their_outputs(tmp_path):
    "`sre2l site`: every notebook as HTML with its committed outputs, linked from an index."
    result = run([tool("sre2l"), "site", "--to", str(tmp_path / "site")], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    index = (tmp_path / "site" / "index.html").read_text()
    for notebook in sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        assert f'href="{notebook.stem}.html"' in index
    for name in STAGE_NOTEBOOKS:
        page = (tmp_path / "site" / name.replace(".ipynb", ".html")).read_text()
        assert "data:image/png" in page and "Try this" in page, f"{name}: no figures or no exercises"
    result = run([tool("sre2l"), "site", "--from", str(tmp_path / "nowhere"), "--to", str(tmp_path / "site2")])
    assert result.returncode == 2 and "run `sre2l demo` first" in result.stderr


def test_a_papermill_command_runs_a_job_and_its_progress_reaches_the_terminal(tmp_path):
    "A user's `papermill in.ipynb out.ipynb`: the kernel knows it is a job; progress goes to papermill's stderr as lines."
    import nbformat, os, subprocess, sys
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from sre2l.core import headless\nfrom sre2l.runs import progress\nprint('job:', headless())\n"
        "for _ in progress(range(3), desc='steps', mininterval=0): pass")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    env = {k: v for k, v in os.environ.items() if k not in ("SRE2L_HEADLESS", "SRE2L_LESSON", "SRE2L_NO_PROGRESS")}
    result = subprocess.run([sys.executable, "-m", "papermill", str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"),
                             "--no-progress-bar"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs
    assert [o.get("text", "") for o in outputs] == ["job: True\n"]  # no bar in the saved notebook
    lines = [l for l in result.stderr.splitlines() if l.startswith("steps:")]
    assert "3/3" in lines[-1] and len(lines) >= 2 and not any("\r" in l for l in lines)
