"""The web app in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``, installed by
.ci/run) opens the page on loopback, uploads a real bottle image, reads the score and the decision off the
page, moves the threshold slider with the keyboard and sees the decision change; a screenshot is saved."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SCREENSHOT_DIR = Path(os.environ.get("GENERALAD_SCREENSHOTS", "")) if os.environ.get("GENERALAD_SCREENSHOTS") else None

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="headless Chromium not found: apt-get install chromium chromium-driver (.ci/run does)",
)


@pytest.fixture(scope="module")
def live_server(app_parts):
    """The app under uvicorn on a free loopback port, in a thread of this process."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app_parts[0], log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1500", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    try:  # the driver path is given: Selenium Manager would otherwise try to download one
        driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    except WebDriverException as err:
        pytest.skip(f"headless Chromium did not start: {' '.join(str(err).split())[:200]}")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _decision(driver) -> str:
    return driver.find_element(By.ID, "decision").text.strip()


def test_upload_read_score_and_move_the_threshold(live_server, browser, bottle, small_run, tmp_path):
    model, _ = small_run
    browser.get(live_server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert "patchcore" in browser.find_element(By.ID, "card-line").text

    sample = next(s for s in bottle.test if s.label == 1)
    browser.find_element(By.ID, "file-input").send_keys(str(Path(sample.path).resolve()))
    wait.until(lambda d: d.find_element(By.ID, "score").text not in ("–", "…", ""))
    shown_score = float(browser.find_element(By.ID, "score").text)
    expected = float(model.score([sample])[0])
    assert shown_score == pytest.approx(expected, rel=1e-5)  # shown with 6 significant digits
    calibrated = _decision(browser)
    assert calibrated == ("ANOMALOUS" if expected > model.threshold_ else "normal")
    wait.until(lambda d: d.find_element(By.ID, "overlay").get_attribute("naturalWidth") not in (None, "0"))

    slider = browser.find_element(By.ID, "threshold")
    # the keyboard, as a person would: End = the highest threshold (nothing anomalous), Home = the lowest
    slider.send_keys(Keys.END if calibrated == "ANOMALOUS" else Keys.HOME)
    moved = _decision(browser)
    assert moved != calibrated and moved in ("ANOMALOUS", "normal")
    assert float(browser.find_element(By.ID, "threshold-value").text) != pytest.approx(model.threshold_)
    browser.find_element(By.ID, "reset").click()
    assert _decision(browser) == calibrated

    rows = browser.find_elements(By.CSS_SELECTOR, "#folder-table tbody tr")
    assert len(rows) == 6  # the --images folder, sorted by score, highest first
    scores = [float(r.find_elements(By.TAG_NAME, "td")[2].text) for r in rows]
    assert scores == sorted(scores, reverse=True)

    shot = (SCREENSHOT_DIR or tmp_path) / "serve_bottle.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_bad_upload_shows_the_one_line_message_and_the_page_keeps_working(live_server, browser, bottle, tmp_path):
    browser.get(live_server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    browser.find_element(By.ID, "file-input").send_keys(str(bad))
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert browser.find_element(By.ID, "error").text.startswith("400: cannot decode image upload 'broken.png'")
    browser.find_element(By.ID, "file-input").send_keys(str(Path(bottle.test[0].path).resolve()))
    wait.until(lambda d: not d.find_element(By.ID, "error").is_displayed())
    wait.until(lambda d: d.find_element(By.ID, "score").text not in ("–", "…", ""))
