"""The MLflow UI, in a real browser: the experiment opens on its run list; the issue table, the figures,
the interactive map and a metric chart render.

A real ``mlflow server`` (sqlite backend, local artifact root served over HTTP) runs on a free
loopback port; a tiny Lightning model trains with :class:`dq_plugins.lightning.DataQualityCallback`
against it over HTTP; headless Chromium, driven by Selenium through the Debian ``chromedriver``,
opens the run, clicks the artifacts in the tree and checks what the UI draws.

Needs ``chromium`` and ``chromium-driver`` (Debian) and ``selenium`` (the dev extra). Without them the
tests are skipped, unless ``DQ_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which makes them fail.
Screenshots go to ``$DQ_BROWSER_SCREENSHOTS`` (default: a pytest temporary folder); the test prints
where. Select these tests alone with ``pytest -m browser``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

REQUIRE_ENV = "DQ_REQUIRE_BROWSER"
SCREENSHOT_ENV = "DQ_BROWSER_SCREENSHOTS"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--no-proxy-server", "--window-size=1920,1200",
)
SERVER_START_TIMEOUT_S = 120.0  # imports alone take ~20 s on a loaded 2-core machine
UI_TIMEOUT_S = 30.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via an HTTP proxy


# ---------------------------------------------------------------------------------------- set-up
def _missing_browser() -> str | None:
    """Why the browser tests cannot run here, or ``None`` when they can."""
    missing = [name for name in ("chromium", "chromedriver") if _which(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not found; install the Debian packages with "
                "`apt-get install -y chromium chromium-driver`")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed; run `pip install -e '.[dev]'`"
    return None


def _which(name: str) -> str | None:
    """``name`` on PATH, else in /usr/bin (Debian's packages put both programs there)."""
    fallback = f"/usr/bin/{name}"
    return shutil.which(name) or (fallback if os.access(fallback, os.X_OK) else None)


@pytest.fixture(scope="module")
def browser_paths() -> tuple[str, str]:
    """``(chromium, chromedriver)``; skips (or fails under ``DQ_REQUIRE_BROWSER=1``) when missing."""
    reason = _missing_browser()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but the browser test cannot run: {reason}")
        pytest.skip(f"browser test skipped: {reason} (set {REQUIRE_ENV}=1 to make this a failure)")
    return _which("chromium"), _which("chromedriver")  # type: ignore[return-value]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_group(process: subprocess.Popen) -> None:
    """Stop the server and every worker it forked (they share its process group)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:  # workers that outlived their parent, or a parent that ignored SIGTERM
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=15)


@pytest.fixture(scope="module")
def mlflow_server(browser_paths, tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port; yields its URL and stops it afterwards."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = folder / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
        "--artifacts-destination", str(folder / "artifacts"),  # uploads go through the server, over HTTP
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    # No background job runner (a pool of huey consumers the UI test does not use).
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        # Load the training stack while the server boots: both take many seconds on a loaded machine.
        import fixture_runs  # noqa: F401
        import mlflow  # noqa: F401

        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with _DIRECT.open(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up after {SERVER_START_TIMEOUT_S:.0f} s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        _stop_group(server)


@dataclass(frozen=True)
class TrainedRun:
    server: str
    experiment_id: str
    run_id: str
    artifacts: Path  # local copies of the run's dq/ artifacts, downloaded over HTTP

    @property
    def page(self) -> str:
        return f"{self.server}/#/experiments/{self.experiment_id}/runs/{self.run_id}/artifacts"

    @property
    def experiment_page(self) -> str:
        """The experiment as the callback's end-of-fit line links it (MLflow 3.17 picks its view from the URL's
        ``workflowType``, older 3.x from the experiment tag ``mlflow.experimentKind``)."""
        from dq_plugins.sinks.mlflow_sink import ui_url

        return ui_url(self.server, self.experiment_id)


@pytest.fixture(scope="module")
def trained_run(mlflow_server, tmp_path_factory) -> TrainedRun:
    """One tiny fit with the callback, logging to the server over HTTP; its dq/ files downloaded back."""
    import mlflow
    from fixture_runs import train_run

    folder = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        patch.chdir(folder)  # a failed upload would keep its files here
        patch.setenv("DQ_PLUGINS_PROJECTION", "pca")  # conftest's pca_maps is per test; this fixture runs earlier
        for name in ("NO_PROXY", "no_proxy"):  # MLflow's client (requests) must reach loopback directly
            patch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))
        run_id, _ = train_run(mlflow_server, epochs=3)
        # The sink keeps its files locally and warns when the server fails: then the UI has nothing to show.
        failed = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and "MLflow" in str(w.message)]
        assert not failed, f"the callback did not reach the tracking server: {failed}"
        client = mlflow.MlflowClient(mlflow_server)
        experiment_id = client.get_run(run_id).info.experiment_id
        assert client.get_experiment(experiment_id).tags.get("mlflow.experimentKind") == "custom_model_development"
        local = Path(client.download_artifacts(run_id, "dq", str(folder / "downloaded")))
    return TrainedRun(mlflow_server, experiment_id, run_id, local)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get(SCREENSHOT_ENV)
    path = Path(folder) if folder else tmp_path_factory.mktemp("browser_screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def driver(browser_paths) -> Iterator[Any]:
    """Headless Chromium through the system chromedriver (Selenium Manager never runs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="dq_chromium_")
    options.add_argument(f"--user-data-dir={profile}")
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ---------------------------------------------------------------------------------------- helpers
def _wait(browser: Any) -> Any:
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        ElementNotInteractableException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    # The single-page app re-renders while it loads: elements appear before they take clicks, or go stale.
    transient = (StaleElementReferenceException, ElementClickInterceptedException, ElementNotInteractableException)
    return WebDriverWait(browser, UI_TIMEOUT_S, poll_frequency=0.2, ignored_exceptions=transient)


def _open_artifact(browser: Any, run: TrainedRun, artifact_path: str) -> None:
    """Show ``artifact_path`` in the run's artifact view: load the page once, unfold its folders, click it."""
    from selenium.webdriver.common.by import By

    if f"/runs/{run.run_id}/artifacts" not in browser.current_url:
        browser.get(run.page)
    wait = _wait(browser)
    parts = artifact_path.split("/")
    for depth, name in enumerate(parts):
        if depth + 1 < len(parts) and browser.find_elements(By.CSS_SELECTOR, _tree_node(parts[depth + 1])):
            continue  # folder already unfolded: a click would fold it

        def click(b: Any, selector: str = _tree_node(name)) -> bool:
            b.find_element(By.CSS_SELECTOR, selector).click()
            return True

        wait.until(click, f"artifact tree node {name!r} of {artifact_path} never became clickable")
    _close_assistant(browser)


def _tree_node(name: str) -> str:
    return f'[data-testid="artifact-tree-node"][artifact-name="{name}"]'


def _close_assistant(browser: Any) -> None:
    """Close MLflow 3's assistant side panel (if shown) so the preview gets the width."""
    from selenium.webdriver.common.by import By

    from selenium.common.exceptions import WebDriverException

    for button in browser.find_elements(By.CSS_SELECTOR, 'button[data-component-id="mlflow.assistant.chat_panel.close"]'):
        try:
            if button.is_displayed():
                button.click()
        except WebDriverException:
            pass  # cosmetic: the checks do not need the room


def _screenshot(browser: Any, folder: Path, name: str) -> Path:
    path = folder / name
    assert browser.save_screenshot(str(path)), f"Chromium could not write the screenshot {path}"
    return path


def _report(capsys: pytest.CaptureFixture, message: str) -> None:
    with capsys.disabled():
        print(f"\n{message}")


def _png_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def _image_digest(browser: Any, image: Any) -> str:
    """SHA-256 (hex) of the bytes behind an <img>'s src, as the browser fetched them."""
    return browser.execute_async_script(
        """const [image, done] = arguments;
        fetch(image.src).then(r => r.arrayBuffer()).then(b => crypto.subtle.digest("SHA-256", b))
            .then(h => done(Array.from(new Uint8Array(h), x => x.toString(16).padStart(2, "0")).join("")))
            .catch(e => done(String(e)));""",
        image,
    )


def _cell_matches(text: str, value: object) -> bool:
    """Whether a cell's text shows ``value`` of the JSON table (numbers as JavaScript prints them)."""
    if value is None:
        return text in ("", "null")
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(text) == pytest.approx(value, abs=1e-9)
        except ValueError:
            return False
    return text == str(value)


@contextlib.contextmanager
def _evidence_on_failure(browser: Any, folder: Path, stem: str) -> Iterator[None]:
    """Keep a screenshot and the page text when a check fails (CI then shows what the UI drew)."""
    try:
        yield
    except Exception:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By

        try:
            path = _screenshot(browser, folder, f"FAILED_{stem}.png")
            path.with_suffix(".txt").write_text(browser.find_element(By.TAG_NAME, "body").text)
            print(f"screenshot of the failed check: {path} (page text beside it)")
        except (WebDriverException, AssertionError, OSError) as err:  # keep the original failure on top
            print(f"no screenshot of the failed check: {err}")
        raise


# ---------------------------------------------------------------------------------------- tests
def test_experiment_opens_on_its_run_list(driver, trained_run, screenshots, capsys):
    from selenium.webdriver.common.by import By

    with _evidence_on_failure(driver, screenshots, "experiment"):
        driver.get(trained_run.server)
        driver.execute_script("window.localStorage.clear()")  # a new user: no view remembered from other tests
        driver.get(trained_run.experiment_page)
        selector = f'a[href$="/experiments/{trained_run.experiment_id}/runs/{trained_run.run_id}"]'
        link = _wait(driver).until(lambda b: next((a for a in b.find_elements(By.CSS_SELECTOR, selector)
                                                   if a.is_displayed()), None),
                                   "the experiment page shows no run list with the dq run (GenAI view?)")
        assert link.text == "blobs-seed0"
        path = _screenshot(driver, screenshots, "experiment_runs.png")
        link.click()  # the run list leads to the run
        _wait(driver).until(lambda b: f"/runs/{trained_run.run_id}" in b.current_url)
    _report(capsys, f"MLflow UI screenshot (run list): {path}")


def test_interactive_map_draws_in_the_artifact_view(driver, trained_run, screenshots):
    from selenium.webdriver.common.by import By

    assert (trained_run.artifacts / "embedding_map.html").is_file()
    with _evidence_on_failure(driver, screenshots, "embedding_map_html"):
        _open_artifact(driver, trained_run, "dq/embedding_map.html")
        frame = _wait(driver).until(lambda b: next(iter(b.find_elements(By.CSS_SELECTOR, "iframe.mlflow-html-iframe")),
                                                   None), "dq/embedding_map.html is not shown in an HTML frame")
        driver.switch_to.frame(frame)
        try:
            # The page's own script ran (the frame allows scripts) and drew the points on its canvas.
            title, painted = _wait(driver).until(lambda b: b.execute_script(
                """const c = document.getElementById("map"); if (!c) return null;
                const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data; let k = 0;
                for (let i = 3; i < d.length; i += 4) if (d[i] > 0) k++;
                return k > 0 ? [document.title, k] : null;"""), "the map's canvas stayed empty")
        finally:
            driver.switch_to.default_content()
    assert title.startswith("Embedding map, train") and painted > 500, (title, painted)


def test_metric_history_draws_as_a_chart(driver, trained_run, screenshots):
    from selenium.webdriver.common.by import By

    with _evidence_on_failure(driver, screenshots, "metric_chart"):
        driver.get(f"{trained_run.server}/#/experiments/{trained_run.experiment_id}/runs/{trained_run.run_id}"
                   "/model-metrics")

        def chart(b: Any) -> Any:
            for card in b.find_elements(By.CSS_SELECTOR, '[data-testid="experiment-view-compare-runs-card"]'):
                if "dq.epoch_accuracy.train" in card.text and card.find_elements(By.CSS_SELECTOR, "svg path"):
                    return card
            return None

        card = _wait(driver).until(chart, "no chart of dq.epoch_accuracy.train on the run's Model metrics tab")
        assert "Step" in card.text  # a per-epoch line chart, not a single-value bar
        assert card.is_displayed()


def test_issue_table_renders_as_a_table(driver, trained_run, screenshots, capsys):
    from selenium.webdriver.common.by import By

    issues = json.loads((trained_run.artifacts / "issues.json").read_text())
    assert issues["data"], "the tiny run logged no issue rows; nothing to check in the UI"
    with _evidence_on_failure(driver, screenshots, "issues_table"):
        _open_artifact(driver, trained_run, "dq/issues.json")
        wait = _wait(driver)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '[role="columnheader"] [title="mislabel_score"]'),
                   "the issue table's mislabel_score column never appeared")

        # The UI offers the table view only for files listed in the tag that log_table writes.
        toggle = driver.find_element(By.XPATH, '//label[.//span[text()="View as table"]]//input[@type="checkbox"]')
        assert toggle.is_selected(), "dq/issues.json is shown as raw JSON, not as a table"
        headers = [e.get_attribute("title")
                   for e in driver.find_elements(By.CSS_SELECTOR, '[role="columnheader"] .table-header-text')]
        assert headers == issues["columns"]

        rows = wait.until(lambda b: [r for r in b.find_elements(By.CSS_SELECTOR, '[role="row"]')
                                     if r.find_elements(By.CSS_SELECTOR, '[role="cell"]')])
        assert len(rows) >= min(len(issues["data"]), 10), f"only {len(rows)} table rows rendered"
        cells = rows[0].find_elements(By.CSS_SELECTOR, '[role="cell"]')
        shown = [cell.get_attribute("textContent") for cell in cells]
        mismatched = [(column, text, value) for column, text, value in zip(issues["columns"], shown, issues["data"][0])
                      if not _cell_matches(text, value)]
        assert len(shown) == len(issues["columns"]) and not mismatched, (
            f"first rendered row {shown} differs from the first row of dq/issues.json: {mismatched}")
        assert cells[0].is_displayed()
        path = _screenshot(driver, screenshots, "issues_table.png")
    _report(capsys, f"MLflow UI screenshot (issue table): {path}")


def test_figures_render_as_images(driver, trained_run, screenshots, capsys):
    from selenium.webdriver.common.by import By

    figures = sorted(p.name for p in trained_run.artifacts.glob("*.png"))
    assert "data_map.png" in figures, f"the run logged no dq/data_map.png (figures: {figures})"
    for name in figures:
        with _evidence_on_failure(driver, screenshots, name.removesuffix(".png")):
            _open_artifact(driver, trained_run, f"dq/{name}")
            # The browser shows the very PNG that was logged (same bytes and pixel size), not the
            # previous preview: on a switch the UI renames the old <img> before its new blob arrives.
            size = _png_size(trained_run.artifacts / name)

            digest = hashlib.sha256((trained_run.artifacts / name).read_bytes()).hexdigest()

            def loaded(b: Any, selector: str = f'img[alt="dq/{name}"]', size: tuple[int, int] = size,
                       digest: str = digest) -> Any:
                return next((i for i in b.find_elements(By.CSS_SELECTOR, selector) if i.get_property("complete")
                             and (i.get_property("naturalWidth"), i.get_property("naturalHeight")) == size
                             and _image_digest(b, i) == digest), None)

            image = _wait(driver).until(
                loaded, f"dq/{name} never rendered as a loaded <img> of the logged PNG ({size[0]}x{size[1]} pixels)")
            assert image.is_displayed() and image.size["width"] > 100 and image.size["height"] > 100, image.size
            if name == "data_map.png":
                path = _screenshot(driver, screenshots, "data_map.png")
    _report(capsys, f"MLflow UI screenshot (data map): {path}")
