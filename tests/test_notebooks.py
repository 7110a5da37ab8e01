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


def test_every_notebook_runs(repo_copy):
    # no time limit a slow machine could hit: one hour only catches a hang (it runs in about 5 minutes on 2 cores)
    result = run([tool("nbdev_test"), "--n_workers", "0", "--timing"], cwd=repo_copy, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (repo_copy / "runs" / "lesson" / "validate" / "manifest.json").is_file()


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
    "`sre2l site`: every notebook as HTML, the stage lessons with the demo's figures, linked from an index."
    from sre2l.cli import demo_notebooks
    executed = demo_notebooks()  # where `sre2l demo` keeps them in this clone
    if not all((executed / name).is_file() for name in STAGE_NOTEBOOKS):  # CI ran the demo before the tests
        result = run([tool("sre2l"), "demo", "--run-dir", str(tmp_path / "demo"), "--out", str(tmp_path / "tables")])
        assert result.returncode == 0, result.stderr[-2000:]
        executed = demo_notebooks(tmp_path / "demo")
    result = run([tool("sre2l"), "site", "--from", str(executed), "--to", str(tmp_path / "site")])
    assert result.returncode == 0, result.stderr
    index = (tmp_path / "site" / "index.html").read_text()
    for notebook in sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        assert f'href="{notebook.stem}.html"' in index
    for name in STAGE_NOTEBOOKS:
        page = (tmp_path / "site" / name.replace(".ipynb", ".html")).read_text()
        assert "data:image/png" in page and "Try this" in page, f"{name}: no figures or no exercises"
    result = run([tool("sre2l"), "site", "--from", str(tmp_path / "nowhere"), "--to", str(tmp_path / "site2")])
    assert result.returncode == 2 and "run `sre2l demo` first" in result.stderr
