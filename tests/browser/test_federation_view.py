"""The clearing house's federation view in a real browser: the administrator logs in with the
keyboard, sees the positions move as transfers commit, runs a settlement cycle and reads its
obligations; the pages pass basic accessibility checks, fit a phone's screen, and the login
and the settlement form work with JavaScript switched off."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from tests.browser.conftest import PHONE, Browser, Federation, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

GP, COLLEGE = "rushey-green", "lewisham-college"


def assert_accessible(driver: WebDriver) -> None:
    """The basics: a language, one main landmark and one h1, a skip link to the main content,
    a label for every field, and a role and a title on every chart. Without the implicit wait:
    it would spend seconds looking for what a page rightly lacks (an image, a chart)."""
    driver.implicitly_wait(0)
    try:
        check_accessible(driver)
    finally:
        driver.implicitly_wait(5)


def check_accessible(driver: WebDriver) -> None:
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    assert len(driver.find_elements(By.TAG_NAME, "main")) == 1
    assert len(driver.find_elements(By.TAG_NAME, "h1")) == 1
    assert driver.find_element(By.TAG_NAME, "h1").text.strip()
    skip = driver.find_element(By.CSS_SELECTOR, "a.skip-link")
    assert str(skip.get_attribute("href")).endswith("#main")
    for field in driver.find_elements(By.CSS_SELECTOR, "input, select, textarea"):
        if field.get_attribute("type") in ("hidden", "submit"):
            continue
        field_id = field.get_attribute("id")
        labels = driver.find_elements(By.CSS_SELECTOR, f'label[for="{field_id}"]')
        assert field_id, "a field without an id"
        assert labels, f"no label for {field_id}"
        assert labels[0].text.strip(), f"an empty label for {field_id}"
    for svg in driver.find_elements(By.CSS_SELECTOR, "svg"):
        assert svg.get_attribute("role") == "img"
        title_ids = (svg.get_attribute("aria-labelledby") or "").split()
        assert title_ids, "a chart without aria-labelledby"
        title = svg.find_element(By.CSS_SELECTOR, ":scope > title")
        assert title.get_attribute("id") in title_ids
        assert (title.get_attribute("textContent") or "").strip()
    for image in driver.find_elements(By.TAG_NAME, "img"):
        assert image.get_attribute("alt") is not None


def shown_positions(driver: WebDriver) -> dict[str, int]:
    """The positions table on the overview, as the page shows it (read in one step: the page
    replaces the table as it refreshes)."""
    shown = driver.execute_script(
        """return Array.from(document.querySelectorAll('#positions-table tbody tr'))
             .map(row => [row.dataset.bank, row.querySelector('.minutes').textContent])"""
    )
    return {str(bank): int(str(minutes).strip()) for bank, minutes in shown}


def log_in_with_keyboard(driver: WebDriver, token: str) -> None:
    """The token's field has the focus when the page opens (else Tab reaches it); type the
    token, Tab to the button and press Enter: no mouse."""
    seen: list[str] = []
    for _ in range(10):
        focused: WebElement = driver.switch_to.active_element
        seen.append(focused.tag_name + "#" + (focused.get_attribute("id") or ""))
        if focused.get_attribute("id") == "secret":
            break
        focused.send_keys(Keys.TAB)
    else:
        pytest.fail(f"the token's field is not reachable with Tab: {seen}")
    focused.send_keys(token)
    focused.send_keys(Keys.TAB)
    button = driver.switch_to.active_element
    assert button.tag_name == "button"
    assert button.text == "Log in"
    button.send_keys(Keys.ENTER)


def skip_to_main_with_keyboard(driver: WebDriver) -> None:
    """The first Tab on a page reaches the skip link; Enter on it moves the focus to the main
    content, past the header and the navigation."""
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    skip = driver.switch_to.active_element
    assert skip.get_attribute("class") == "skip-link"
    assert skip.is_displayed(), "the skip link shows when it has the focus"
    skip.send_keys(Keys.ENTER)
    wait_for(lambda: driver.switch_to.active_element.get_attribute("id") == "main", 5, "main")


def log_in_by_form(driver: WebDriver, token: str) -> None:
    driver.find_element(By.ID, "secret").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()


def test_the_administrator_sees_the_positions_move_and_runs_a_settlement_cycle(
    federation: Federation, open_browser: Callable[..., Browser]
) -> None:
    federation.add_member(GP, "maya")
    federation.add_member(COLLEGE, "bob")
    browser = open_browser(name="federation-view")
    driver = browser.driver

    # Not logged in: the login page, which the keyboard alone can use.
    driver.get(f"{federation.clearing_url}/ui/")
    wait_for(lambda: "/ui/login" in driver.current_url, 10, "the login page")
    assert_accessible(driver)
    browser.screenshot("01-login")
    driver.find_element(By.ID, "secret").send_keys("not-the-token-at-all")
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    notice = driver.find_element(By.CSS_SELECTOR, ".notice.error").text
    assert "did not work" in notice
    assert "token" not in notice.lower()
    log_in_with_keyboard(driver, federation.admin_token)
    wait_for(lambda: driver.current_url.endswith("/ui/"), 10, "the overview")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Federation"
    assert_accessible(driver)
    skip_to_main_with_keyboard(driver)
    assert shown_positions(driver) == federation.admin_get("/v1/positions")["positions"]
    browser.screenshot("02-overview-before")

    # Transfers commit through the banks' API; the page refreshes its positions by itself.
    federation.transfer(GP, "maya", COLLEGE, "bob", 90)
    federation.transfer(COLLEGE, "bob", GP, "maya", 30)
    expected = federation.admin_get("/v1/positions")["positions"]
    assert expected == {GP: -60, COLLEGE: 60}
    wait_for(lambda: shown_positions(driver) == expected, 20, "the positions to move")
    chart = driver.find_element(By.CSS_SELECTOR, "#positions svg desc").get_attribute("textContent")
    assert f"{GP}: -1h 00m" in str(chart)
    assert f"{COLLEGE}: 1h 00m" in str(chart)
    driver.refresh()  # the flows table is not refreshed by itself
    flows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#flows tbody tr")]
    assert any(f"{GP} {COLLEGE} 1 90" in row for row in flows), flows
    browser.full_page_screenshot("03-overview-after-transfers")

    # The settlement cycle, run through its form.
    driver.find_element(By.LINK_TEXT, "Settlement cycles").click()
    wait_for(lambda: driver.current_url.endswith("/ui/settlements"), 10, "the cycles page")
    assert_accessible(driver)
    browser.screenshot("04-settlements-before")
    driver.find_element(By.XPATH, "//button[text()='Close a settlement cycle now']").click()
    wait_for(lambda: driver.current_url.endswith("/ui/settlements/1"), 10, "cycle 1's page")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Settlement cycle 1"
    assert_accessible(driver)
    cycle = federation.admin_get("/v1/settlements/1")
    rows = driver.find_elements(By.CSS_SELECTOR, "#obligations tbody tr")
    shown = [
        {
            "number": int(str(row.get_attribute("data-number"))),
            "debtor": row.find_element(By.CSS_SELECTOR, ".debtor").text,
            "creditor": row.find_element(By.CSS_SELECTOR, ".creditor").text,
            "minutes": int(row.find_element(By.CSS_SELECTOR, ".obligation-minutes").text),
        }
        for row in rows
    ]
    assert shown == [
        {k: o[k] for k in ("number", "debtor", "creditor", "minutes")} for o in cycle["obligations"]
    ]
    assert shown == [{"number": 1, "debtor": GP, "creditor": COLLEGE, "minutes": 60}]
    browser.full_page_screenshot("05-settlement-cycle-1")

    # The cycles page lists it; running another while it is open is refused, with the reason.
    driver.find_element(By.LINK_TEXT, "All settlement cycles").click()
    assert "Cycle 1" in driver.find_element(By.ID, "cycles").text
    driver.find_element(By.XPATH, "//button[text()='Close a settlement cycle now']").click()
    assert "open" in driver.find_element(By.CSS_SELECTOR, ".notice.error").text
    browser.full_page_screenshot("06-settlements-refused")

    driver.find_element(By.LINK_TEXT, "Waiting transfers").click()
    assert_accessible(driver)
    browser.screenshot("07-waiting-transfers")

    # On a phone's screen: one column, nothing wider than the screen.
    driver.set_window_size(*PHONE)
    driver.get(f"{federation.clearing_url}/ui/")
    assert driver.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    ), "the page scrolls sideways on a phone"
    browser.full_page_screenshot("08-overview-phone")


def test_logging_in_and_running_a_cycle_work_without_javascript(
    federation: Federation, open_browser: Callable[..., Browser]
) -> None:
    federation.add_member(GP, "maya")
    federation.add_member(COLLEGE, "bob")
    federation.transfer(COLLEGE, "bob", GP, "maya", 45)
    browser = open_browser(name="without-javascript", javascript=False)
    driver = browser.driver
    driver.get(f"{federation.clearing_url}/ui/settlements")
    log_in_by_form(driver, federation.admin_token)
    # Back where it was going, after the login.
    wait_for(lambda: driver.current_url.endswith("/ui/settlements"), 10, "the cycles page")
    driver.find_element(By.XPATH, "//button[text()='Close a settlement cycle now']").click()
    wait_for(lambda: driver.current_url.endswith("/ui/settlements/1"), 10, "cycle 1's page")
    rows = driver.find_elements(By.CSS_SELECTOR, "#obligations tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, ".debtor").text for r in rows] == [COLLEGE]
    assert [r.find_element(By.CSS_SELECTOR, ".obligation-minutes").text for r in rows] == ["45"]
    browser.screenshot("cycle-without-javascript")
    # Logging out works without JavaScript too, and the pages then ask for a login again.
    driver.find_element(By.XPATH, "//button[text()='Log out']").click()
    wait_for(lambda: "/ui/login" in driver.current_url, 10, "the login page")
    driver.get(f"{federation.clearing_url}/ui/settlements/1")
    assert "/ui/login" in driver.current_url
