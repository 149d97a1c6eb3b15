"""Drive Debian's Chromium from Python (selenium) for the viewer's browser test, its screenshot and its benchmark.

Only the system browser and the system chromedriver are used: the driver's path is given, so
selenium-manager never downloads a browser or a driver. Where either is missing, ``skip_reason``
says what to install.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def find_browser() -> tuple[str | None, str | None]:
    """The paths of a system Chromium and chromedriver (None where missing)."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = next((p for p in map(shutil.which, DRIVERS) if p), None)
    if driver is None and Path("/usr/lib/chromium/chromedriver").is_file():
        driver = "/usr/lib/chromium/chromedriver"
    return browser, driver


def skip_reason() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    browser, driver = find_browser()
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        return (f"no system {missing}: `make chromium` installs Debian's (apt-get install chromium chromium-driver); "
                "a downloaded browser build is never used")
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A headless system Chromium under selenium, with the page's console kept (``goog:loggingPrefs``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_browser()
    if browser is None or driver_path is None:
        raise RuntimeError(skip_reason())
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    """The page's console messages at level SEVERE since the last call (JavaScript errors, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def load_viewer(driver: Any, url: str, timeout: float = 60.0) -> dict[str, Any]:
    """Open the page at ``url`` and wait until its first render is done; returns ``window.viewer``'s read-outs
    (``ready``: ms since navigation when the first render finished; ``nodes``, ``edges``)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    return driver.execute_script("return {ready: window.viewer.ready, nodes: window.viewer.nodes, "
                                 "edges: window.viewer.edges}")


def screenshot_viewer(url: str, path: str | Path, *, pin: int = 3, threshold: float | None = None,
                      width: int = 1600, height: int = 1000) -> Path:
    """A PNG of the page at ``url``, pruned to ``threshold`` of the influence (None: the page's default),
    with the ``pin`` most influential features pinned and the first of them hovered (so its label and
    contexts show). Written atomically; returns the path."""
    from selenium.common.exceptions import ElementClickInterceptedException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from transcoders.writes import write_bytes

    with chromium(width, height) as driver:
        load_viewer(driver, url)
        features = driver.find_elements(By.CSS_SELECTOR, "#nodes .node.f")
        ranked = [el.get_attribute("data-id") for el in sorted(features, key=lambda el: -float(el.get_attribute("r")))]

        def node(node_id: str) -> Any:  # found afresh each time: every click redraws the nodes
            return driver.find_element(By.CSS_SELECTOR, f'#nodes .node[data-id="{node_id}"]')

        if threshold is not None:  # the pruning slider, as a user would drag it
            driver.execute_script("const s = document.getElementById('threshold'); s.value = arguments[0]; "
                                  "s.dispatchEvent(new Event('input'));", threshold)
            driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            ranked = [n for n in ranked if driver.find_elements(By.CSS_SELECTOR, f'#nodes .node[data-id="{n}"]')]
        clicked = []
        for node_id in ranked:
            if len(clicked) == pin:
                break
            try:
                node(node_id).click()
                clicked.append(node_id)
            except ElementClickInterceptedException:  # covered by a bigger neighbour: take the next one
                continue
        if clicked:
            ActionChains(driver).move_to_element(node(clicked[0])).perform()
        return write_bytes(path, driver.get_screenshot_as_png())


if __name__ == "__main__":
    # docs/viewer-ioi.png: python tests/browser_helpers.py OUT_DIR docs/viewer-ioi.png [THRESHOLD], where OUT_DIR
    # is `circuits demo`'s (or `circuits trace "When Mary and John went to the store, John gave a drink to"`'s) output.
    import sys

    from graphs.html_server import ViewerServer

    folder, target = sys.argv[1], sys.argv[2]
    with ViewerServer(folder) as server:
        print(screenshot_viewer(server.url, target, threshold=float(sys.argv[3]) if len(sys.argv) > 3 else None))
