"""A bank's dashboard in a real browser, against a whole federation: a coordinator logs in
with the keyboard, finds a member, records an exchange for them, invites them and reads the
reports; a member sets a passphrase with their code, pays a member of a partner bank and
sees the payment on their statement once it commits, pays with the keyboard alone, and
shares an offer that the partner bank's members then see (and one they do not). Every page
visited passes the basic accessibility checks of the federation view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.browser.conftest import DESKTOP, PHONE, Browser, Federation, wait_for
from tests.browser.test_federation_view import assert_accessible

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

GP, COLLEGE = "rushey-green", "lewisham-college"
PASSPHRASE = "four words to remember"


def api(federation: Federation, bank: str, method: str, path: str, **body: Any) -> Any:
    """The bank's API with the operator's token; anything but a 2xx fails the test."""
    url = f"{federation.bank(bank)['url']}{path}"
    response = httpx.request(
        method, url, json=body or None, headers=federation.operator(bank), timeout=10
    )
    assert response.status_code < 300, f"{method} {path}: {response.text}"
    return response.json()


def accept(federation: Federation, bank: str, login: str, code: str) -> None:
    url = f"{federation.bank(bank)['url']}/v1/invitations/accept"
    body = {"login": login, "code": code, "passphrase": PASSPHRASE}
    response = httpx.post(url, json=body, timeout=10)
    assert response.status_code == 201, response.text


def balance(federation: Federation, bank: str, member_id: str) -> int:
    return int(api(federation, bank, "GET", f"/v1/members/{member_id}")["balance_minutes"])


def log_in(driver: WebDriver, bank_url: str, login: str) -> None:
    """Type the login and the passphrase, and press Enter in the passphrase's field."""
    driver.get(f"{bank_url}/ui/login")
    focused = driver.switch_to.active_element
    assert focused.get_attribute("id") == "login", "the login's field has the focus"
    focused.send_keys(login)
    driver.find_element(By.ID, "secret").send_keys(PASSPHRASE, Keys.ENTER)
    wait_for_page(driver, lambda url: "/ui/login" not in url, "the login to go through")


def wait_for_page(driver: WebDriver, check: Callable[[str], bool], what: str) -> None:
    """Until the browser is at a URL that passes ``check`` and the page there has loaded (a
    click does not wait for the page it leads to)."""

    def arrived() -> bool:
        loaded = driver.execute_script("return document.readyState") == "complete"
        return check(driver.current_url) and loaded

    wait_for(arrived, 10, what)


def submit_and_wait(driver: WebDriver, button: WebElement, what: str) -> None:
    """Press ``button`` (a click, or Enter on it when focused) and wait for the next page's
    notice: a page loaded that is not the one the button was on (which a mark set on its
    window tells), with a notice on it."""
    driver.execute_script("window.timebankOldPage = true")
    if button == driver.switch_to.active_element:
        button.send_keys(Keys.ENTER)  # the keyboard's way
    else:
        button.click()

    def arrived() -> bool:
        try:
            new_page = driver.execute_script(
                "return window.timebankOldPage === undefined && document.readyState === 'complete'"
            )
            return bool(new_page and driver.find_elements(By.CSS_SELECTOR, "main .notice"))
        except WebDriverException:  # asked while the browser was between the two pages
            return False

    wait_for(arrived, 10, what)


def notice(driver: WebDriver) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, "main .notice").text)


def fill(driver: WebDriver, **fields: str) -> None:
    """Type into the fields with these ids, replacing what they held."""
    for field_id, value in fields.items():
        field = driver.find_element(By.ID, field_id)
        field.clear()
        field.send_keys(value)


def statement_rows(driver: WebDriver) -> list[list[str]]:
    """The statement's rows, newest first: each row's cells but the date."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#statement tbody tr")
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")][1:] for row in rows]


def sideways(driver: WebDriver) -> list[str]:
    """Nothing when the page does not scroll sideways; else by how much, and the outermost
    elements that stick out (as tag#id.class; a table in its scrolling box is one of them)."""
    return list(
        driver.execute_script(
            """const page = document.documentElement;
            if (page.scrollWidth <= page.clientWidth) return [];
            const wide = Array.from(document.querySelectorAll('body *')).filter(
              e => e.getBoundingClientRect().right > page.clientWidth + 1);
            return [`the page: ${page.scrollWidth}px in ${page.clientWidth}px`].concat(
              wide.filter(e => !wide.includes(e.parentElement)).slice(0, 6).map(
                e => `${e.tagName.toLowerCase()}#${e.id}.${e.className}`));"""
        )
    )


def test_a_coordinator_records_an_exchange_invites_a_member_and_reads_the_reports(
    shared_federation: Federation, open_browser: Callable[..., Browser]
) -> None:
    federation = shared_federation
    for member_id in ("george", "hannah"):
        federation.add_member(GP, member_id)
    sam = api(federation, GP, "POST", "/v1/coordinators", coordinator_id="sam", name="Sam Okafor")
    accept(federation, GP, "sam", sam["code"])
    before = {m: balance(federation, GP, m) for m in ("george", "hannah")}
    browser = open_browser(name="coordinator-view")
    driver, url = browser.driver, federation.bank(GP)["url"]

    driver.get(f"{url}/ui/")
    wait_for_page(driver, lambda url: "/ui/login" in url, "the login page")
    assert_accessible(driver)
    browser.screenshot("01-login")
    log_in(driver, url, "sam")
    wait_for_page(driver, lambda url: url.endswith("/ui/members"), "the members page")
    assert "Sam Okafor" in driver.find_element(By.CSS_SELECTOR, ".site-header .who").text
    # The bank's name from the federation's config, not its id.
    header = driver.find_element(By.CSS_SELECTOR, ".service-name").text
    assert header == "Rushey Green Time Bank (GP surgery)"

    fill(driver, q="george")
    driver.find_element(By.ID, "q").send_keys(Keys.ENTER)
    wait_for_page(driver, lambda url: "q=george" in url, "the search's results")
    listed = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#members tbody a")]
    assert listed == ["george"]
    assert_accessible(driver)
    browser.screenshot("02-members-search")

    driver.find_element(By.LINK_TEXT, "george").click()
    wait_for_page(driver, lambda url: url.endswith("/ui/members/george"), "george's page")
    assert_accessible(driver)
    browser.full_page_screenshot("03-member")

    fill(driver, payee="hannah", hours="1", minutes="30", memo="Lift to the surgery")
    assert Select(driver.find_element(By.ID, "bank")).first_selected_option.text.startswith(
        "This bank"
    )
    record = driver.find_element(By.XPATH, "//button[text()='Record the exchange']")
    submit_and_wait(driver, record, "the exchange's notice")
    assert notice(driver) == "george paid hannah 90 minutes: recorded."
    rows = statement_rows(driver)
    assert rows == [["hannah", "Lift to the surgery\nrecorded by coordinator sam", "-90"]]
    assert_accessible(driver)
    browser.full_page_screenshot("04-exchange-recorded")
    after = {m: balance(federation, GP, m) for m in ("george", "hannah")}
    assert after == {"george": before["george"] - 90, "hannah": before["hannah"] + 90}
    acts = api(federation, GP, "GET", "/v1/coordinators/sam/acts")
    assert [(a["member_id"], a["action"]) for a in acts] == [("george", "paid")]

    driver.find_element(By.XPATH, "//button[text()='Make an invitation code']").click()
    wait_for_page(driver, lambda url: url.endswith("/invitation"), "the invitation slip")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Invitation for George"
    assert driver.find_element(By.ID, "invitation-login").text == "george"
    code = driver.find_element(By.ID, "invitation-code").text
    assert_accessible(driver)
    browser.screenshot("05-invitation-slip")
    acts = api(federation, GP, "GET", "/v1/coordinators/sam/acts")
    assert [(a["member_id"], a["action"]) for a in acts][-1][0] == "george"
    accept(federation, GP, "george", code)  # the slip's code works, once

    driver.find_element(By.LINK_TEXT, "Reports").click()
    wait_for_page(driver, lambda url: url.endswith("/ui/reports"), "the reports page")
    charts = driver.find_elements(By.CSS_SELECTOR, "figure.chart-figure svg")
    assert len(charts) == 4
    for figure in driver.find_elements(By.CSS_SELECTOR, "figure.chart-figure"):
        title = figure.find_element(By.CSS_SELECTOR, "svg > title").get_attribute("textContent")
        assert figure.find_element(By.TAG_NAME, "figcaption").text == title
    exchanged = charts[0].find_element(By.TAG_NAME, "desc").get_attribute("textContent")
    assert "1h 30m" in str(exchanged), exchanged
    assert_accessible(driver)
    browser.full_page_screenshot("06-reports")


def wait_for_partner_bank(driver: WebDriver) -> None:
    """The partner bank is in the pay form's list once this bank heard the directory."""

    def listed() -> bool:
        options = driver.find_elements(By.CSS_SELECTOR, f'#bank option[value="{COLLEGE}"]')
        if options:
            return True
        driver.refresh()
        return False

    driver.implicitly_wait(0)
    try:
        wait_for(listed, 30, "the partner bank in the pay form's list")
    finally:
        driver.implicitly_wait(5)


def test_a_member_pays_a_member_of_a_partner_bank_and_sees_it_on_the_statement(
    shared_federation: Federation, open_browser: Callable[..., Browser]
) -> None:
    federation = shared_federation
    federation.add_member(GP, "maya")
    federation.add_member(COLLEGE, "bob")
    invitation = api(federation, GP, "POST", "/v1/members/maya/invitation")
    browser = open_browser(name="member-view")
    driver, url = browser.driver, federation.bank(GP)["url"]

    driver.get(f"{url}/ui/welcome")
    assert_accessible(driver)
    browser.screenshot("01-welcome")
    fill(driver, login="maya", code=invitation["code"], passphrase=PASSPHRASE, again=PASSPHRASE)
    driver.find_element(By.XPATH, "//button[text()='Set my passphrase and log in']").click()
    wait_for_page(driver, lambda url: url.endswith("/ui/me"), "the member's own page")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Hello, Maya"
    assert_accessible(driver)
    browser.screenshot("02-me")
    # Another day: she logs out, and in again with her member number and passphrase.
    driver.find_element(By.XPATH, "//button[text()='Log out']").click()
    wait_for_page(driver, lambda url: "/ui/login" in url, "the login page")
    log_in(driver, url, "maya")
    wait_for_page(driver, lambda url: url.endswith("/ui/me"), "the member's own page")

    wait_for_partner_bank(driver)
    option = driver.find_element(By.CSS_SELECTOR, f'#bank option[value="{COLLEGE}"]')
    assert option.text == f"Lewisham College Time Bank ({COLLEGE})"
    fill(driver, payee="bob", hours="0", minutes="45", memo="Maths tutoring")
    Select(driver.find_element(By.ID, "bank")).select_by_value(COLLEGE)
    pay = driver.find_element(By.XPATH, "//button[text()='Pay']")
    submit_and_wait(driver, pay, "the payment's notice")
    assert notice(driver) == (
        f"45 minutes to bob at {COLLEGE}: sent: it shows once the other bank accepts it."
    )
    browser.screenshot("03-payment-sent")

    wait_for(lambda: balance(federation, COLLEGE, "bob") == 45, 30, "bob to be paid")
    maya = wait_for(
        lambda: (m := api(federation, GP, "GET", "/v1/members/maya"))["held_minutes"] == 0 and m,
        30,
        "maya's hold to be released",
    )
    assert maya["balance_minutes"] == -45
    driver.refresh()
    rows = statement_rows(driver)
    assert rows == [[f"{COLLEGE}/bob other bank", "Maths tutoring", "-45"]]
    assert "-0h 45m" in driver.find_element(By.CSS_SELECTOR, "section.cards .big").text
    assert_accessible(driver)
    browser.full_page_screenshot("04-me-after-transfer")
    driver.set_window_size(*PHONE)
    browser.full_page_screenshot("05-me-phone")
    assert sideways(driver) == [], "the page scrolls sideways on a phone"


def tab_to(driver: WebDriver, field_id: str) -> WebElement:
    """Press Tab until the field with this id has the focus (no mouse)."""
    seen: list[str] = []
    for _ in range(25):
        focused: WebElement = driver.switch_to.active_element
        if focused.get_attribute("id") == field_id:
            return focused
        seen.append(f"{focused.tag_name}#{focused.get_attribute('id') or ''}")
        focused.send_keys(Keys.TAB)
    pytest.fail(f"Tab does not reach #{field_id}: {seen}")


def test_a_member_pays_with_the_keyboard_alone(
    shared_federation: Federation, open_browser: Callable[..., Browser]
) -> None:
    federation = shared_federation
    for member_id in ("lena", "omar"):
        federation.add_member(GP, member_id)
    accept(
        federation, GP, "lena", api(federation, GP, "POST", "/v1/members/lena/invitation")["code"]
    )
    browser = open_browser(name="member-view-keyboard")
    driver, url = browser.driver, federation.bank(GP)["url"]
    log_in(driver, url, "lena")
    wait_for_page(driver, lambda url: url.endswith("/ui/me"), "the member's own page")

    # Skip link first, then through the form in its order: payee, bank, hours, minutes, memo.
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    skip = driver.switch_to.active_element
    assert skip.get_attribute("class") == "skip-link"
    skip.send_keys(Keys.ENTER)
    tab_to(driver, "payee").send_keys("omar", Keys.TAB)
    order = []
    for value in (None, "0", "20", "Shopping"):
        focused = driver.switch_to.active_element
        order.append(focused.get_attribute("id"))
        if value is not None:
            focused.send_keys(Keys.CONTROL, "a")
            focused.send_keys(value)
        focused.send_keys(Keys.TAB)
    assert order == ["bank", "hours", "minutes", "memo"]
    button = driver.switch_to.active_element
    assert (button.tag_name, button.text) == ("button", "Pay")
    browser.screenshot("01-pay-button-focused")
    submit_and_wait(driver, button, "the payment's notice")
    assert notice(driver) == "20 minutes to omar: paid."
    assert balance(federation, GP, "omar") == 20
    browser.screenshot("02-paid")


def post_offer(driver: WebDriver, title: str, *, shared: bool) -> None:
    fill(driver, **{"o-title": title, "hours": "2", "minutes": "0", "o-where": "Catford"})
    Select(driver.find_element(By.ID, "o-category")).select_by_value("gardening")
    if shared:
        driver.find_element(By.ID, "o-shared").click()
    post = driver.find_element(By.XPATH, "//button[text()='Post']")
    submit_and_wait(driver, post, "the offer's notice")


def partner_offers(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "partner-offers").text)


def test_a_shared_offer_shows_at_the_partner_bank_and_an_unshared_one_never_does(
    shared_federation: Federation, open_browser: Callable[..., Browser]
) -> None:
    federation = shared_federation
    federation.add_member(GP, "priya")
    federation.add_member(COLLEGE, "carl")
    for bank, member_id in ((GP, "priya"), (COLLEGE, "carl")):
        code = api(federation, bank, "POST", f"/v1/members/{member_id}/invitation")["code"]
        accept(federation, bank, member_id, code)
    browser = open_browser(name="member-view-offers")
    driver, url = browser.driver, federation.bank(GP)["url"]
    log_in(driver, url, "priya")
    driver.find_element(By.LINK_TEXT, "Offers and requests").click()
    wait_for_page(driver, lambda url: url.endswith("/ui/offers"), "the offers board")
    assert_accessible(driver)

    # The unshared one first: once the shared one reached the partner, anything published
    # before it would have too.
    post_offer(driver, "Weeding, just for neighbours here", shared=False)
    assert notice(driver) == "Posted: Weeding, just for neighbours here."
    post_offer(driver, "Pruning fruit trees", shared=True)
    assert notice(driver) == "Posted: Pruning fruit trees (shared with partner banks)."
    here = driver.find_element(By.ID, "offers").text
    assert "Pruning fruit trees" in here
    assert "Weeding, just for neighbours here" in here
    assert_accessible(driver)
    browser.full_page_screenshot("01-offers-posted")

    partner = open_browser(name="member-view-partner")
    pdriver, purl = partner.driver, federation.bank(COLLEGE)["url"]
    log_in(pdriver, purl, "carl")
    pdriver.get(f"{purl}/ui/offers")

    def arrived() -> bool:
        try:
            if "Pruning fruit trees" in partner_offers(pdriver):
                return True
        except WebDriverException:  # a stale element, or the page between two loads
            return False  # the page reloaded as it was read
        pdriver.refresh()
        return False

    wait_for(arrived, 30, "the shared offer at the partner bank")
    shown = partner_offers(pdriver)
    assert f"Pruning fruit trees offer Gardening Priya (priya) {GP} Catford 2h 00m" in shown
    assert "Weeding" not in shown
    listed = api(federation, COLLEGE, "GET", "/v1/federation/offers")
    assert [o["title"] for o in listed["offers"]] == ["Pruning fruit trees"]
    assert_accessible(pdriver)
    partner.full_page_screenshot("01-offers-at-partner")
    pdriver.set_window_size(*PHONE)
    partner.full_page_screenshot("02-offers-at-partner-phone")
    assert sideways(pdriver) == [], "the offers board scrolls sideways on a phone"

    # Carl had the trees pruned: from the offer's page he pays Priya at her bank for it.
    pdriver.set_window_size(*DESKTOP)
    pdriver.find_element(By.LINK_TEXT, "Pruning fruit trees").click()
    wait_for_page(pdriver, lambda url: "/ui/offers/" in url, "the offer's page")
    assert_accessible(pdriver)
    record = pdriver.find_element(By.XPATH, "//button[text()='Record']")
    submit_and_wait(pdriver, record, "the transfer's notice")
    assert notice(pdriver) == "Sent: 120 minutes. It shows once the other bank accepts it."
    partner.screenshot("03-offer-paid")
    wait_for(lambda: balance(federation, GP, "priya") == 120, 30, "priya to be paid at her bank")
