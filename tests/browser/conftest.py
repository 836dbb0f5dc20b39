"""Browser tests: Debian's chromium, driven through its chromium-driver by selenium, against a
whole federation started by `timebank up` (real processes, a real nats-server). Screenshots go
to $TIMEBANK_SCREENSHOTS, or artifacts/screenshots/ under the repository (gitignored)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
TIMEBANK = Path(sys.executable).parent / "timebank"
DESKTOP = (1280, 900)
PHONE = (390, 844)
CONFIG = """
[clearing]
deadline_seconds = 10

[[banks]]
id = "rushey-green"
name = "Rushey Green Time Bank (GP surgery)"
limit_minutes = 600

[[banks]]
id = "lewisham-college"
name = "Lewisham College Time Bank"
limit_minutes = 600
"""


# Every screenshot of the run, listed at the end of the test output.
SCREENSHOTS: list[Path] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SCREENSHOTS:
        terminalreporter.section("browser screenshots")
        for path in SCREENSHOTS:
            terminalreporter.write_line(str(path))


def screenshots_dir() -> Path:
    path = Path(os.environ.get("TIMEBANK_SCREENSHOTS") or REPO / "artifacts" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out after {seconds}s waiting for {what}")


@dataclass
class Browser:
    """A chromium window, and where its screenshots go (under the test's name)."""

    driver: WebDriver
    prefix: str
    saved: list[Path]

    def screenshot(self, name: str) -> Path:
        path = screenshots_dir() / f"{self.prefix}-{name}.png"
        assert self.driver.save_screenshot(str(path)), f"no screenshot at {path}"
        self.saved.append(path)
        SCREENSHOTS.append(path)
        print(f"screenshot: {path}")
        return path

    def full_page_screenshot(self, name: str) -> Path:
        """The whole page, as tall as its content, at the window's width."""
        width = self.driver.get_window_size()["width"]
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(width, max(int(height) + 140, 400))
        try:
            return self.screenshot(name)
        finally:
            self.driver.set_window_size(width, DESKTOP[1] if width >= DESKTOP[0] else PHONE[1])


def chromium_options(*, javascript: bool, profile: Path) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    return options


@pytest.fixture
def open_browser(request: pytest.FixtureRequest) -> Iterator[Callable[..., Browser]]:
    """Start chromium (with or without JavaScript) in a fresh profile; quit it afterwards."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
            "apt-get install chromium chromium-driver"
        )
    opened: list[tuple[WebDriver, tempfile.TemporaryDirectory[str]]] = []

    def start(*, name: str = "", javascript: bool = True) -> Browser:
        prefix = re.sub(r"[^A-Za-z0-9_-]+", "-", name or request.node.name)[:60]
        profile = tempfile.TemporaryDirectory(prefix="timebank-chromium-")
        options = chromium_options(javascript=javascript, profile=Path(profile.name))
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        driver.set_window_size(*DESKTOP)
        driver.set_page_load_timeout(30)
        driver.implicitly_wait(5)
        opened.append((driver, profile))
        return Browser(driver, prefix, [])

    yield start
    for driver, profile in opened:
        driver.quit()
        profile.cleanup()


@dataclass
class Federation:
    """What `timebank up` wrote to federation.json: every service's URL and tokens."""

    described: dict[str, Any]

    @property
    def clearing_url(self) -> str:
        return str(self.described["clearing"]["url"])

    @property
    def admin_token(self) -> str:
        return str(self.described["clearing"]["admin_token"])

    def bank(self, bank_id: str) -> dict[str, str]:
        bank: dict[str, str] = self.described["banks"][bank_id]
        return bank

    def operator(self, bank_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bank(bank_id)['operator_token']}"}

    def admin_get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        response = httpx.get(f"{self.clearing_url}{path}", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def add_member(self, bank_id: str, member_id: str) -> None:
        body = {"member_id": member_id, "name": member_id.title(), "kind": "person"}
        url = f"{self.bank(bank_id)['url']}/v1/members"
        response = httpx.post(url, json=body, headers=self.operator(bank_id), timeout=10)
        assert response.status_code == 201, response.text

    def transfer(self, payer_bank: str, payer: str, to_bank: str, payee: str, minutes: int) -> str:
        """A cross-bank transfer through the payer's bank's API, waited for until committed."""
        body = {"payer": payer, "to_bank": to_bank, "payee": payee, "minutes": minutes, "memo": ""}
        url = f"{self.bank(payer_bank)['url']}/v1/transfers"

        def requested() -> str | None:
            # Until the bank has heard the directory from the clearing house: 404 unknown_bank.
            r = httpx.post(url, json=body, headers=self.operator(payer_bank), timeout=10)
            if r.status_code == 404:
                return None
            assert r.status_code == 202, r.text
            return str(r.json()["transfer_id"])

        transfer_id: str = wait_for(requested, 30, "the bank to accept the transfer")

        def committed() -> bool:
            r = httpx.get(f"{url}/{transfer_id}", headers=self.operator(payer_bank), timeout=10)
            return bool(r.json()["status"] == "committed")

        wait_for(committed, 30, f"transfer {transfer_id} to commit")
        return transfer_id


@contextmanager
def running_federation(directory: Path) -> Iterator[Federation]:
    """`timebank up` with CONFIG in ``directory`` until the block ends (then SIGTERM)."""
    config = directory / "federation.toml"
    config.write_text(CONFIG)
    data_dir = directory / "data"
    log = (directory / "up.log").open("wb")
    up = subprocess.Popen(
        [str(TIMEBANK), "up", "--config", str(config), "--data-dir", str(data_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        described_path = data_dir / "federation.json"
        wait_for(described_path.exists, 60, "federation.json")
        yield Federation(json.loads(described_path.read_text()))
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=40)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        log.close()


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    """A clearing house and two banks over a real nats-server, stopped after the test."""
    with running_federation(tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def shared_federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """One federation for a module's tests (starting one takes seconds): each test uses its
    own members, so they do not see each other's exchanges."""
    with running_federation(tmp_path_factory.mktemp("federation")) as running:
        yield running
