"""Every writer cleans up after a dead predecessor: a run killed part-way (or the files a killed writer leaves: a
pid-named temporary, a half-unpacked folder) and then rerun ends with the same tree as a clean run, file by file,
temporaries included. make-imagefolder's test is in test_reliability; recover, relabel and validate have theirs there
and in test_recover."""
import os
import shutil
import signal
import subprocess
import sys
import time


from conftest import ROOT, default_sigint
from sre2l.runs import sha256_file

VOLATILE = {"log.txt", "progress.json", "manifest.json", "fetch.json"}  # time stamps and this run's paths; compared apart


def dead_pid() -> int:
    "A pid no process has (above any in use)."
    return max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 100000


def tree(folder, volatile=VOLATILE) -> dict:
    "{relative path: sha256, or 'present' for files whose content holds times}: every file, hidden ones included."
    return {str(p.relative_to(folder)): "present" if p.name in volatile else sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fetch_after_a_killed_unpacking_equals_a_clean_fetch(tmp_path):
    from sre2l.fetch import ARTIFACTS, Artifact, fetch, register_artifact
    fixture = ROOT / "tests" / "fixtures" / "official-relabel"
    shutil.make_archive(tmp_path / "images", "zip", fixture, "images")
    ARTIFACTS.pop("t_writer", None)
    register_artifact(Artifact("t_writer", "images.zip", "images", "sre2l_in1k", ("data.name=imagenet-shape",)))
    try:
        checksum = sha256_file(tmp_path / "images.zip")
        get = lambda data: fetch("t_writer", None, source=tmp_path / "images.zip", sha256=checksum, data_dir=tmp_path / data)
        get("clean")
        folder = tmp_path / "killed" / "t_writer" / checksum[:16]
        half = folder / f".files.{dead_pid()}.part.tmp"  # an unpacking killed half-way
        (half / "images" / "new000").mkdir(parents=True); (half / "images" / "new000" / "x.jpg").write_bytes(b"half")
        (folder / f".fetch.json.{dead_pid()}.ab12.tmp").write_text("{half")  # and its record half-written
        get("killed")
        assert tree(tmp_path / "killed") == tree(tmp_path / "clean")
    finally:
        ARTIFACTS.pop("t_writer", None)


def test_a_region_relabel_killed_and_rerun_equals_a_clean_run(tmp_path):
    from test_regions import SPLIT
    from sre2l.presets import make_config
    from sre2l.squeeze import run_squeeze
    cfg = make_config("digits", SPLIT)
    run_squeeze(cfg, tmp_path / "clean")
    shutil.copytree(tmp_path / "clean" / "squeeze", tmp_path / "killed" / "squeeze")
    command = lambda run: [sys.executable, "-m", "sre2l.cli", "relabel", "--run-dir", str(run), *sum((["--set", s] for s in SPLIT), [])]
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1"}
    assert subprocess.run(command(tmp_path / "clean"), env=env, capture_output=True).returncode == 0
    job = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           preexec_fn=default_sigint)
    regions = tmp_path / "killed" / "relabel" / "regions"
    while job.poll() is None and len(list(regions.glob("shard_*.safetensors"))) < 2: time.sleep(0.05)
    job.send_signal(signal.SIGKILL); job.wait()
    (regions / f".shard_000004.safetensors.{dead_pid()}.ab12.tmp").write_bytes(b"half a shard")
    assert subprocess.run(command(tmp_path / "killed"), env=env, capture_output=True).returncode == 0
    assert tree(tmp_path / "killed") == tree(tmp_path / "clean")


def test_a_table_render_killed_and_rerun_equals_a_clean_render(tmp_path):
    from sre2l.plan import plan_table
    from sre2l.report import write_report
    from sre2l.tables import get_table
    runs = plan_table(get_table("demo"), tmp_path / "runs")  # no cell has run: the table and its record still render
    write_report(get_table("demo"), runs, tmp_path / "clean")
    (tmp_path / "killed" / "demo").mkdir(parents=True)
    (tmp_path / "killed" / "demo" / f".demo.md.{dead_pid()}.ab12.tmp").write_text("| half a table")
    write_report(get_table("demo"), runs, tmp_path / "killed")
    assert tree(tmp_path / "killed", set()) == tree(tmp_path / "clean", set())


def test_a_lessons_refresh_killed_and_rerun_leaves_whole_clean_notebooks(tmp_path, monkeypatch):
    "A refresh writes each notebook whole after cleaning it in the copy; one killed while writing leaves nothing behind."
    import sre2l.lessons
    project = tmp_path / "repo"
    for name in ("nbs", "sre2l"): shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "settings.ini", project / "settings.ini")
    def executed_as_committed(project, into):  # the lessons as committed stand for a fresh execution (minutes saved)
        shutil.copytree(project / "nbs", into / "nbs"); shutil.copy(project / "settings.ini", into / "settings.ini")
        return sorted((into / "nbs").glob("*.ipynb"))
    monkeypatch.setattr(sre2l.lessons, "execute_lessons", executed_as_committed)
    left = project / "nbs" / f".01_squeeze.ipynb.{dead_pid()}.ab12.tmp"
    left.write_text('{"cells": [')  # a refresh killed while writing
    sre2l.lessons.refresh_lessons(project)
    assert tree(project / "nbs", set()) == tree(ROOT / "nbs", set())  # clean notebooks refresh to themselves, nothing left


def test_every_tables_record_of_environments_takes_only_the_stages_its_cells_need(tmp_path):
    "Some cells need no squeeze or recover (students of the training split): the record must not ask for them."
    from sre2l.plan import plan_table
    from sre2l.report import environments
    from sre2l.tables import get_table, list_tables
    for name in list_tables():
        assert environments(plan_table(get_table(name), tmp_path / name)) == []  # nothing has run
