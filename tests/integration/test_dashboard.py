"""The web dashboard (``/ui``) in a real browser: Debian's headless Chromium driven by
Selenium through ChromeDriver, against a real orchestrator and worker on loopback. A user
signs in through the page (``POST /v1/login``); a task submitted elsewhere appears in the
list by itself (the page follows ``/v1/events``); its page shows its attempt on the worker;
Cancel on that page cancels it; Run again resubmits a failed task; the workers page shows
the worker. ``MUTIRAO_SCREENSHOTS=DIR`` keeps screenshots of the pages (the README's)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from mutirao.auth import ADMIN
from tests.integration.cluster import LocalCluster

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT = 15.0
"""Seconds the page gets to show what is checked (a live update is due within 0.5 s)."""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("chromium and chromedriver are missing: run `make browser`", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As root, with no network but loopback: no sandbox, no calls home.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _until(driver: WebDriver, what: str, check: Callable[[WebDriver], Any]) -> Any:
    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check, f"page never showed {what}")


def _text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def _shot(driver: WebDriver, name: str) -> None:
    folder = os.environ.get("MUTIRAO_SCREENSHOTS")
    if folder:
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


async def test_the_dashboard_in_a_real_browser(cluster: LocalCluster, browser: WebDriver) -> None:
    await cluster.start("W1")
    await cluster.add_user("ana", "ana-password-1", role=ADMIN)
    browser.get(cluster.url + "/ui")  # redirected to /ui/
    _until(browser, "the sign-in form", lambda d: d.find_element(By.ID, "login").is_displayed())
    browser.find_element(By.ID, "username").send_keys("ana")
    browser.find_element(By.ID, "password").send_keys("ana-password-1")
    browser.find_element(By.ID, "login-button").click()
    _until(browser, "the task list", lambda d: d.find_element(By.ID, "tasks").is_displayed())
    assert _text(browser, "who") == "ana (admin)"

    async with cluster.client() as client:
        done = await client.submit("sum", [1, 2, 3], wait=10)
        long = await client.submit("sleep", 60)
        failed = await client.submit("fail", "on purpose", max_attempts=1, wait=10)
    row = f'tr[data-id="{long["id"]}"]'
    # Submitted elsewhere: it shows up without a reload, running on W1.
    _until(
        browser, "the new task", lambda d: "running" in d.find_element(By.CSS_SELECTOR, row).text
    )
    assert _text(browser, "task-count").startswith("3 of 3")
    assert "leader orchestrator" in _text(browser, "cluster")
    _shot(browser, "ui-tasks")

    browser.find_element(By.CSS_SELECTOR, f"{row} a").click()
    _until(browser, "the task's page", lambda d: _text(d, "task-id") == long["id"])
    attempts = browser.find_elements(By.CSS_SELECTOR, "#attempt-table tbody tr")
    assert len(attempts) == 1
    assert "W1" in attempts[0].text
    assert "in progress" in attempts[0].text
    _shot(browser, "ui-task")
    browser.find_element(By.ID, "cancel").click()
    _until(browser, "the cancellation", lambda d: _text(d, "task-state") == "cancelled")
    async with cluster.client() as client:
        assert (await client.get(long["id"]))["state"] == "cancelled"

    browser.get(f"{cluster.url}/ui/#/task/{failed['id']}")
    _until(browser, "the failed task", lambda d: _text(d, "task-state") == "failed")
    assert "RuntimeError: on purpose" in _text(browser, "task-outcome")
    browser.find_element(By.ID, "retry").click()
    _until(browser, "the task run again", lambda d: _text(d, "task-id") != failed["id"])
    again = _text(browser, "task-id")
    async with cluster.client() as client:
        view = await client.wait(again, timeout=10)
    assert (view["type"], view["payload"], view["state"]) == ("fail", "on purpose", "failed")

    browser.get(f"{cluster.url}/ui/#/tasks?state=succeeded")
    _until(browser, "the filtered list", lambda d: _text(d, "task-count").startswith("1 of 1"))
    assert done["id"] in _text(browser, "task-table")

    browser.get(f"{cluster.url}/ui/#/workers")
    _until(browser, "the workers", lambda d: "W1" in _text(d, "worker-table"))
    assert "alive" in _text(browser, "worker-table")
