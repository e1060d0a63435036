"""JupyterLab for real: a JupyterLab server on 127.0.0.1 and Debian's chromium (headless,
driven by playwright, nothing downloaded) run a small notebook that builds the explorer on
the embedded model, through the UI; the widget's controls and pictures must be in the page,
and a control changed through the page must change the prediction. The same server opens a
notebook's paired py:percent twin as a notebook (jupytext's lab integration, as `make lab`
sets it up).

The browser is Debian's chromium (`make test` installs it when missing). A screenshot of
the explorer is written to $DIFFPROMPT_SCREENSHOTS when that is set (else under the
test's temporary folder).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from diffprompt.lab import LAB_OVERRIDES, write_overrides

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TWIN = "01_feature_probing"  # the paired notebook the browser opens as its .py

EXPLORER_CELLS = [
    "import os\n\nimport torch\n\n"
    "from diffprompt.build import build_model\n"
    "from diffprompt.data import build_dataset\n"
    "from diffprompt.dg.config import TrainConfig\n"
    "from diffprompt.viz import Explorer",
    'root = os.environ["DIFFPROMPT_LAB_DATA"]\n'
    "torch.manual_seed(0)\n"
    'model = build_model(TrainConfig(model="toy-sd", data_root=root, prompt_mode="fixed"))\n'
    'sets = {n: build_dataset(n, "val", root) for n in ("cityscapes", "acdc_night")}',
    'explorer = Explorer(model, sets, "a photo of an urban street scene", timesteps=(1, 200))\n'
    "explorer.widget",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def lab(tmp_path_factory, mini_root):
    """A JupyterLab server on a free port of 127.0.0.1 with a token, serving a folder with
    the explorer notebook and a paired notebook (both files), its settings in the folder."""
    if CHROMIUM is None:
        pytest.fail(
            "the JupyterLab browser test needs Debian's chromium: `make test` installs it "
            "(apt-get install chromium); nothing downloads a browser"
        )
    work = tmp_path_factory.mktemp("lab")
    served = work / "served"
    served.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in EXPLORER_CELLS]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, served / "explorer.ipynb")
    for suffix in (".py", ".ipynb"):
        shutil.copy(ROOT / "notebooks" / f"{TWIN}{suffix}", served / f"{TWIN}{suffix}")
    settings = write_overrides(work / "app-settings").parent  # what `make lab` writes
    port, token = _free_port(), "diffprompt-test-token"
    env = {
        **os.environ,
        "DIFFPROMPT_LAB_DATA": str(mini_root),
        "HF_HUB_OFFLINE": "1",
        "JUPYTER_CONFIG_DIR": str(work / "config"),
        "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(work / "user-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(work / "workspaces"),
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={served}",
        f"--LabApp.app_settings_dir={settings}",
        *(["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
    ]
    log = (work / "server.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                _get(f"{base}/api/status?token={token}")
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    log.flush()
                    raise RuntimeError(
                        "JupyterLab did not start:\n" + (work / "server.log").read_text()
                    ) from None
                time.sleep(0.5)
        yield {"base": base, "token": token, "work": work, "served": served}
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


def _accept_kernel(page) -> None:
    """Accept the kernel JupyterLab proposes for a notebook opened the first time."""
    select = page.locator(".jp-Dialog button", has_text="Select")
    try:
        select.wait_for(timeout=20_000)
    except Exception:  # no dialog: the kernel started on its own
        return
    select.click()


def _run_all_cells(page) -> None:
    """Run every cell through JupyterLab's menu bar: Run > Run All Cells."""
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()


@pytest.mark.slow
def test_the_explorer_renders_in_jupyterlab_and_its_controls_work(lab, browser):
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(f"{lab['base']}/lab/tree/explorer.ipynb?token={lab['token']}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    _accept_kernel(page)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    _run_all_cells(page)
    explorer = page.locator(".diffprompt-explorer")
    shots = Path(os.environ.get("DIFFPROMPT_SCREENSHOTS", lab["work"]))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        explorer.wait_for(timeout=180_000)
    except Exception as e:  # what the page shows instead: in the failure and a screenshot
        page.screenshot(path=str(shots / "lab_explorer_failed.png"), full_page=True)
        outputs = page.locator(".jp-OutputArea").all_inner_texts()
        raise AssertionError(f"the explorer did not render; cell outputs: {outputs}") from e
    # the controls: the data set, the image index, the free-text prompt and the timestep
    assert explorer.locator("select").count() == 1
    assert explorer.locator(".widget-slider").count() == 2
    prompt = explorer.locator(".widget-text input")
    assert prompt.input_value() == "a photo of an urban street scene"
    # the pictures are real PNGs the browser decoded, and the image's per-class IoU
    prediction = explorer.locator("img.diffprompt-prediction")
    for name in ("image", "label", "prediction", "pca"):
        img = explorer.locator(f"img.diffprompt-{name}")
        img.wait_for()
        page.wait_for_function(
            "(el) => el.complete && el.naturalWidth > 0", arg=img.element_handle()
        )
        assert img.evaluate("(el) => [el.naturalWidth, el.naturalHeight]") == [128, 64]
    assert explorer.locator("table.diffprompt-iou").locator("tr").count() >= 3
    status = explorer.locator(".diffprompt-status")
    assert "cityscapes #0" in status.inner_text()
    page.screenshot(path=str(shots / "lab_explorer.png"), full_page=True)
    # a control changed through the page changes the prediction picture
    before = prediction.get_attribute("src")
    explorer.locator("select").select_option("acdc_night")
    page.wait_for_function(
        "([el, src]) => el.src !== src && el.complete && el.naturalWidth > 0",
        arg=[prediction.element_handle(), before],
        timeout=60_000,
    )
    page.wait_for_function(
        "(el) => el.textContent.includes('acdc_night')", arg=status.element_handle()
    )
    # and the free-text prompt: typed, then Enter
    prompt.fill("a photo of a street at night")
    prompt.press("Enter")
    page.wait_for_function(
        "(el) => el.textContent.includes('at night')", arg=status.element_handle(), timeout=60_000
    )
    page.screenshot(path=str(shots / "lab_explorer_changed.png"), full_page=True)
    page.close()


@pytest.mark.slow
def test_a_paired_py_twin_opens_as_a_notebook_with_its_parameters_cell(lab, browser):
    assert json.loads((lab["work"] / "app-settings" / "overrides.json").read_text()) == (
        LAB_OVERRIDES
    )
    # the server reads the .py as a notebook (jupytext's contents manager), the parameters
    # cell tagged as papermill needs it
    model = _get(
        f"{lab['base']}/api/contents/{TWIN}.py?type=notebook&content=1&token={lab['token']}"
    )
    cells = model["content"]["cells"]
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert model["type"] == "notebook" and len(tagged) == 1
    assert "data_root: str =" in tagged[0]["source"]
    # and the browser opens it as a notebook (the default viewer `make lab` sets), not as text
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{lab['base']}/lab/tree/{TWIN}.py?reset&token={lab['token']}")  # no other tab
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    panel.locator(".jp-Cell").first.wait_for(timeout=60_000)
    _accept_kernel(page)
    assert page.locator(".lm-TabBar-tab.lm-mod-current", has_text=f"{TWIN}.py").count() >= 1
    assert panel.locator(".jp-Cell").count() == len(cells)
    assert page.locator(".jp-FileEditor").count() == 0
    page.close()


def test_lab_settings_merge_into_overrides_and_bad_json_is_named(tmp_path):
    folder = tmp_path / "settings"
    folder.mkdir()
    mine = {"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"}}
    (folder / "overrides.json").write_text(json.dumps(mine))
    path = write_overrides(folder)
    assert json.loads(path.read_text()) == {**mine, **LAB_OVERRIDES}  # kept what was there
    assert json.loads(write_overrides(folder).read_text()) == {**mine, **LAB_OVERRIDES}
    (folder / "overrides.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"overrides.json is not valid JSON.*fix or remove it"):
        write_overrides(folder)
    assert (folder / "overrides.json").read_text() == "{not json"  # untouched
