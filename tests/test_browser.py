"""JupyterLab in a real browser: 02_recover opened and run, the explorer moved to another class, its image changes.

Needs Debian's chromium and chromium-driver and the selenium package (CI installs them); skipped with the reason
where one is missing. JupyterLab serves a copy of the notebooks, so autosave cannot touch the checkout.
"""
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
MISSING = [name for name, found in (("chromium", CHROMIUM), ("chromium-driver", DRIVER),
                                    ("selenium", importlib.util.find_spec("selenium"))) if not found]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not installed here: {', '.join(MISSING)} "
                                                      "(apt-get install chromium chromium-driver; pip install selenium)")
HANG = 900  # seconds: only catches a hang (the notebook takes about a minute on 2 cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture
def lab(repo_copy, tmp_path):
    "A JupyterLab server on a free local port over a copy of the repository; its URL."
    port, home = free_port(), tmp_path / "jupyter"
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1", "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_DATA_DIR": str(home / "data")}
    env.pop("SRE2L_HEADLESS", None)  # the explorer is the point
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                               "--ServerApp.token=", "--ServerApp.password=", "--LabApp.expose_app_in_browser=True",
                               f"--ServerApp.root_dir={repo_copy}", "--ServerApp.open_browser=False",
                               "--allow-root"],  # CI containers run as root
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(HANG):
            assert server.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]  # it stopped: say why
            try:
                urllib.request.urlopen(f"{url}/api", timeout=5); break
            except OSError: time.sleep(1)
        else: raise AssertionError("JupyterLab did not answer: " + (tmp_path / "lab.log").read_text()[-3000:])
        yield url
    finally:
        server.terminate(); server.wait(timeout=60)


def wait_for(driver, script: str, what: str):
    "Poll a JavaScript expression in the page until it is truthy; its value."
    for _ in range(HANG):
        value = driver.execute_script(f"try {{ return {script} }} catch (e) {{ return null }}")
        if value: return value
        time.sleep(1)
    raise AssertionError(f"gave up waiting for {what}")


NOTEBOOK = "window.jupyterapp.shell.currentWidget"
DONE = (f"{NOTEBOOK}.sessionContext.session.kernel.status === 'idle' && "
        f"{NOTEBOOK}.content.widgets.every(c => c.model.type !== 'code' || c.model.executionCount !== null)")
ERRORS = (f"{NOTEBOOK}.content.widgets.filter(c => c.model.type === 'code').flatMap(c => "
          "Array.from({length: c.model.outputs.length}, (_, i) => c.model.outputs.get(i).toJSON()))"
          ".filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue)")
EXPLORER_IMAGE = "Array.from(document.querySelectorAll('.widget-interact img')).map(i => i.src).join('|')"


def test_recover_lesson_runs_in_jupyterlab_and_its_explorer_moves(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(f"{lab}/lab/tree/nbs/02_recover.ipynb")
        wait_for(driver, f"{NOTEBOOK}.sessionContext.session.kernel.status === 'idle'", "the kernel")
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        time.sleep(2)
        wait_for(driver, DONE, "every cell to run")
        assert driver.execute_script(f"return {ERRORS}") == []
        before = wait_for(driver, EXPLORER_IMAGE, "the explorer's image")
        handle = driver.find_elements(By.CSS_SELECTOR, ".widget-interact .widget-slider .noUi-handle")[0]  # 'class'
        handle.click(); handle.send_keys(Keys.ARROW_RIGHT)
        after = wait_for(driver, f"({EXPLORER_IMAGE}) !== {before!r} && ({EXPLORER_IMAGE})", "the explorer to redraw")
        assert after and after != before
    finally:
        driver.quit()


@pytest.fixture
def clean_lab(repo_copy, tmp_path):
    "JupyterLab started as `sre2l lab` starts it, over a committed git clone of the copy; (URL, clone)."
    from sre2l.lessons import lab_command
    git = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    shutil.copy(ROOT / ".gitignore", repo_copy / ".gitignore")  # as in a clone: Jupyter's checkpoints and nbdev's stamp ignored
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "lessons as committed"]):
        subprocess.run(["git", *args], cwd=repo_copy, env=git, check=True)
    port, home = free_port(), tmp_path / "jupyter"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_DATA_DIR": str(home / "data")}  # an empty user configuration: the hook comes from the command alone
    command = lab_command(port, browser=False, project=repo_copy) + ["--ip=127.0.0.1", "--ServerApp.token=", "--ServerApp.password=",
                                                                     "--LabApp.expose_app_in_browser=True", "--allow-root"]
    server = subprocess.Popen(command, env=env, cwd=repo_copy, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(HANG):
            assert server.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/api", timeout=5); break
            except OSError: time.sleep(1)
        yield url, repo_copy
    finally:
        server.terminate(); server.wait(timeout=60)


def test_a_lesson_opened_run_and_saved_in_jupyterlab_leaves_git_status_clean(clean_lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    url, clone = clean_lab
    status = lambda: subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True).stdout
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    saved = f"{NOTEBOOK}.context.model.dirty === false && {NOTEBOOK}.context.contentsModel.last_modified"
    try:
        driver.get(f"{url}/lab/tree/nbs/00_core.ipynb")
        wait_for(driver, f"{NOTEBOOK}.sessionContext.session.kernel.status === 'idle'", "the kernel")
        # loaded (JupyterLab may mark it modified on opening: waiting for `saved` here waited for its 2-minute autosave)
        first = wait_for(driver, f"{NOTEBOOK}.context.isReady && {NOTEBOOK}.context.contentsModel.last_modified", "the notebook to load")
        driver.execute_script("window.jupyterapp.commands.execute('docmanager:save')")
        first = wait_for(driver, f"({saved}) !== {first!r} && ({saved})", "the save")
        assert status() == "", status()  # opened and saved: clean
        # run the cells down to the registry's check, whose printed lines do not change, then save again
        cell = driver.execute_script(f"return {NOTEBOOK}.content.widgets.findIndex(c => c.model.sharedModel.getSource()"
                                     ".startsWith('colours = Registry'))")
        assert cell > 0
        driver.execute_script(f"{NOTEBOOK}.content.activeCellIndex = {cell + 1}; "
                              "window.jupyterapp.commands.execute('notebook:run-all-above')")
        wait_for(driver, f"{NOTEBOOK}.content.widgets[{cell}].model.executionCount !== null && "
                         f"{NOTEBOOK}.sessionContext.session.kernel.status === 'idle'", "the cells to run")
        assert "did you mean red" in driver.execute_script(f"return JSON.stringify({NOTEBOOK}.content.widgets[{cell}].model.outputs.toJSON())")
        driver.execute_script("window.jupyterapp.commands.execute('docmanager:save')")
        wait_for(driver, f"({saved}) !== {first!r} && ({saved})", "the second save")
        assert status() == "", status()  # run and saved: still clean
    finally:
        driver.quit()
