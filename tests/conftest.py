"""Shared helpers for the test suite."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# files a stage writes about its run rather than its results: times and process ids differ between any two runs
RUN_RECORDS = ("manifest.json", "progress.json", "log.txt")
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    "Path of a console script installed beside the running Python (nbdev_export, sre2l, ...)."
    candidate = BIN / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


@pytest.fixture
def repo_copy(tmp_path):
    "A copy of the notebooks, package and settings in a temporary folder (nothing in the checkout changes)."
    target = tmp_path / "repo"
    target.mkdir()
    for name in ("nbs", "sre2l", "figures"):  # figures: the index notebook and the site show the committed demo
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    for name in ("settings.ini", "setup.py", "README.md"):
        shutil.copy(ROOT / name, target / name)
    return target


def run(args, cwd=None, env=None, timeout=3600):  # only catches a hang; no test depends on a machine's speed
    "Run a command, returning the completed process (never raising on a non-zero exit)."
    full_env = {**os.environ, "SRE2L_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def default_sigint():
    "A child's preexec_fn: SIGINT as Python expects it, whatever the parent set (a background job of a script ignores it)."
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)
