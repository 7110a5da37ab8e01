"""Every writer cleans up after a dead predecessor: a run killed part-way (SIGKILL of a live process, or the files a killed writer leaves: a
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


def _kill_when(job, ready, poll: float = 0.002) -> bool:
    "SIGKILL `job` as soon as `ready()` holds; True when the kill, not the job's own end, stopped it."
    while job.poll() is None and not ready(): time.sleep(poll)
    job.send_signal(signal.SIGKILL); job.wait()
    return job.returncode == -signal.SIGKILL


def test_a_table_render_killed_while_writing_and_rerun_equals_a_clean_render(tmp_path):
    """`sre2l reproduce demo --render-only`, SIGKILLed as its first figure appears (a live writer, not planted files),
    then rerun: the table folder equals a clean render's, every file and temporary compared."""
    from sre2l.plan import finished, plan_table
    from sre2l.tables import get_table
    runs = tmp_path / "runs"
    made = ROOT / "runs" / "reproduce" / "demo"  # .ci/run's demo table: its figures make the render take a while
    if all(finished(r, s) is not None for r in plan_table(get_table("demo"), made.parent) for s in r.keys):
        shutil.copytree(made, runs / "demo", symlinks=True)
    else: (runs / "demo").mkdir(parents=True)  # nothing has run here: the table and its record still render
    command = lambda out: [sys.executable, "-m", "sre2l.cli", "reproduce", "demo", "--render-only", "--run-dir", str(runs),
                           "--out", str(out)]
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1"}
    assert subprocess.run(command(tmp_path / "clean"), env=env, capture_output=True).returncode == 0
    job = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           preexec_fn=default_sigint)
    folder = tmp_path / "killed" / "demo"
    assert _kill_when(job, lambda: folder.is_dir() and any(folder.iterdir()))  # killed part-way, not after its end
    assert not (folder / "results.json").exists()  # the record is written last: a killed render is not sealed
    assert subprocess.run(command(tmp_path / "killed"), env=env, capture_output=True).returncode == 0
    assert tree(tmp_path / "killed", set()) == tree(tmp_path / "clean", set())


def _tiny_project(folder):
    "A repository of three quick lessons: the package, settings.ini, and notebooks of one small cell each."
    import nbformat
    shutil.copytree(ROOT / "sre2l", folder / "sre2l", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "settings.ini", folder / "settings.ini")
    (folder / "nbs").mkdir()
    for i in range(3):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Lesson {i}", id=f"text{i}"),
                                             nbformat.v4.new_code_cell(f"print(sum(range({i + 10})))", id=f"code{i}")])
        nbformat.write(nb, folder / "nbs" / f"0{i}_lesson.ipynb")
    return folder


def test_a_lessons_refresh_killed_and_rerun_leaves_whole_clean_notebooks(tmp_path):
    """`sre2l lessons`, SIGKILLed twice (while executing, and as it moves the first notebook into nbs/), then rerun: nbs/
    equals a clean refresh's, file by file, and no dead refresh's folder is left in the temporary folder."""
    import tempfile
    clean, killed = _tiny_project(tmp_path / "clean"), _tiny_project(tmp_path / "killed")
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1", "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    command = [sys.executable, "-m", "sre2l.cli", "lessons"]
    assert subprocess.run(command, cwd=clean, env=env, capture_output=True).returncode == 0
    assert "45\\n" in (clean / "nbs" / "00_lesson.ipynb").read_text()  # executed: sum(range(10)) is in its outputs
    original = {p: p.stat().st_ino for p in (killed / "nbs").glob("*.ipynb")}
    executing = lambda: any((tmp_path / "tmp").glob("sre2l-lessons-*/nbs/00_lesson.ipynb"))
    moved = lambda: any(p.stat().st_ino != ino for p, ino in original.items() if p.exists())
    for ready in (executing, moved):
        job = subprocess.Popen(command, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=default_sigint)
        assert _kill_when(job, ready)
    assert subprocess.run(command, cwd=killed, env=env, capture_output=True).returncode == 0
    assert tree(killed / "nbs", set()) == tree(clean / "nbs", set())
    assert list((tmp_path / "tmp").glob("sre2l-lessons-*")) == []


def test_every_tables_record_of_environments_takes_only_the_stages_its_cells_need(tmp_path):
    "Some cells need no squeeze or recover (students of the training split): the record must not ask for them."
    from sre2l.plan import plan_table
    from sre2l.report import environments
    from sre2l.tables import get_table, list_tables
    for name in list_tables():
        assert environments(plan_table(get_table(name), tmp_path / name)) == []  # nothing has run
