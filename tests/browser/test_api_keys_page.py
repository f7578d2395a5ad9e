"""The API keys page in a real headless Chromium against a real gateway, PostgreSQL,
upstream and host JWKS. Browser steps run in a thread; the gateway keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import ARTIFACTS
from tests.hostapp import COOKIE, HostIdentity, host
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    bearer,
    make_config,
    running_gateway,
    unique,
)

__all__ = ["host"]  # a fixture
PAGE = "/account/api-keys"
T = TypeVar("T")


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, host: HostIdentity
) -> AsyncIterator[RunningGateway]:
    config = make_config(tmp_path, database_url, upstream.url, self_service=host.session_config())
    async with running_gateway(config) as running:
        yield running


class Page:
    """The page as a person uses it (blocking Selenium calls; run through `step`)."""

    def __init__(self, driver: webdriver.Chrome, base: str) -> None:
        self.driver = driver
        self.url = base + PAGE
        # The list is drawn anew after every change: an element found just before may
        # be gone by the time it is read; the wait tries again.
        self.wait = WebDriverWait(driver, 10, ignored_exceptions=(StaleElementReferenceException,))

    def by_id(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def visible(self, element_id: str) -> WebElement:
        return self.wait.until(ec.visibility_of_element_located((By.ID, element_id)))

    def sign_in(self, token: str) -> None:
        self.driver.get(self.url)
        self.visible("signed-out")
        self.driver.add_cookie({"name": COOKIE, "value": token, "path": "/"})
        self.driver.get(self.url)
        self.visible("app")

    def row(self, name: str) -> WebElement:
        return self.wait.until(
            ec.visibility_of_element_located(
                (By.XPATH, f"//tr[.//span[@class='key-name' and text()='{name}']]")
            )
        )

    def table_text(self) -> str:
        return str(self.by_id("keys-panel").text)

    def take_key(self) -> str:
        """Read the one-time reveal, then press Done; returns the key."""
        field = self.visible("reveal-key")
        key = str(field.get_attribute("value"))
        assert self.driver.switch_to.active_element == field  # focus moved to it
        self.by_id("done").click()
        self.wait.until(ec.invisibility_of_element_located((By.ID, "reveal")))
        assert self.by_id("reveal-key").get_attribute("value") == ""
        return key

    def confirm(self, row_name: str, action: str, grace: str | None = None) -> str:
        self.row(row_name).find_element(By.CSS_SELECTOR, f"button[data-action={action}]").click()
        dialog = self.visible("confirm")
        title = str(self.by_id("confirm-title").text)
        if grace is not None:
            Select(self.by_id("grace")).select_by_value(grace)
        self.by_id("confirm-ok").click()
        self.wait.until(lambda d: not dialog.get_attribute("open"))
        return title

    def places_the_key_could_leak(self) -> str:
        return str(
            self.driver.execute_script(
                "return [JSON.stringify(Object.entries(localStorage)),"
                " JSON.stringify(Object.entries(sessionStorage)),"
                " document.cookie, location.href, document.title, history.length].join('|')"
            )
        )

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


async def step(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


async def status_with(http: aiohttp.ClientSession, gateway: RunningGateway, key: str) -> int:
    async with http.get(gateway.proxy + "/v1/me", headers=bearer(key)) as response:
        return response.status


async def test_create_use_rotate_and_delete_through_the_page(
    driver: webdriver.Chrome,
    gateway: RunningGateway,
    host: HostIdentity,
    http: aiohttp.ClientSession,
) -> None:
    page = Page(driver, gateway.proxy)
    user = unique("pat")
    await step(page.sign_in, host.token(user))
    assert await step(lambda: page.by_id("who").text) == f"Signed in as {user}@example.com"

    def create() -> None:
        page.by_id("new-key").click()
        page.visible("create-panel")
        page.by_id("name").send_keys("Figma plugin")
        page.by_id("description").send_keys("design laptop")
        Select(page.by_id("expiry")).select_by_value("7")
        assert "will expire on" in page.by_id("expiry-result").text
        page.by_id("figma-preset").click()
        page.by_id("scope-me-read").click()
        page.screenshot("form")
        page.by_id("create").click()
        page.visible("reveal")
        page.screenshot("reveal")

    await step(create)
    leak_check_before_done = await step(page.places_the_key_could_leak)
    key = await step(page.take_key)
    assert key.startswith("gwk_")
    assert key not in leak_check_before_done
    assert key not in await step(page.places_the_key_could_leak)
    assert await status_with(http, gateway, key) == 200

    listed = await step(page.table_text)
    assert "Figma plugin" in listed and "design laptop" in listed and "Never used" in listed
    assert key[:12] in listed and key not in listed
    for scope in ("projects:read", "projects:write", "actor_tokens:create", "me:read"):
        assert scope in listed
    await step(page.screenshot, "desktop")

    title = await step(page.confirm, "Figma plugin", "rotate", "0")
    assert title == "Rotate “Figma plugin”?"
    rotated = await step(page.take_key)
    assert rotated != key and rotated.startswith("gwk_")
    assert await status_with(http, gateway, key) == 401
    assert await status_with(http, gateway, rotated) == 200

    title = await step(page.confirm, "Figma plugin", "delete")
    assert title == "Delete “Figma plugin”?"
    await step(page.visible, "empty")
    assert await status_with(http, gateway, rotated) == 401

    def inactive_view() -> str:
        page.by_id("tab-inactive").click()
        page.wait.until(lambda d: "revoked" in page.table_text().lower())
        return page.table_text()

    inactive = await step(inactive_view)
    assert inactive.lower().count("revoked") == 2 and rotated not in inactive
    assert rotated not in await step(page.places_the_key_could_leak)


async def test_cancelling_a_delete_keeps_the_key(
    driver: webdriver.Chrome, gateway: RunningGateway, host: HostIdentity
) -> None:
    user = unique("quinn")
    await gateway.create_key(user, ["me:read"], name="keep me")
    page = Page(driver, gateway.proxy)
    await step(page.sign_in, host.token(user))

    def cancel(action: str) -> str:
        page.row("keep me").find_element(By.CSS_SELECTOR, f"button[data-action={action}]").click()
        page.visible("confirm")
        focused = str(page.driver.switch_to.active_element.get_attribute("id"))
        page.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        page.wait.until(lambda d: not page.by_id("confirm").get_attribute("open"))
        return focused

    # Each destructive dialog opens on Cancel: Enter alone never confirms.
    for action in ("delete", "rotate", "toggle"):
        assert await step(cancel, action) == "confirm-cancel", action
    assert "keep me" in await step(page.table_text)

    def enter_on_open() -> None:
        page.row("keep me").find_element(By.CSS_SELECTOR, "button[data-action=delete]").click()
        page.visible("confirm")
        page.driver.switch_to.active_element.send_keys(Keys.ENTER)
        page.wait.until(lambda d: not page.by_id("confirm").get_attribute("open"))

    await step(enter_on_open)
    assert "keep me" in await step(page.table_text)


async def test_keyboard_only_create(
    driver: webdriver.Chrome,
    gateway: RunningGateway,
    host: HostIdentity,
    http: aiohttp.ClientSession,
) -> None:
    page = Page(driver, gateway.proxy)
    await step(page.sign_in, host.token(unique("kim")))

    def press(*keys: str) -> None:
        page.driver.switch_to.active_element.send_keys(*keys)

    def tab_to(element_id: str, limit: int = 60) -> None:
        for _ in range(limit):
            if page.driver.switch_to.active_element.get_attribute("id") == element_id:
                return
            press(Keys.TAB)
        raise AssertionError(f"Tab never reached #{element_id}")

    def create() -> str:
        tab_to("new-key")
        press(Keys.ENTER)
        assert page.driver.switch_to.active_element.get_attribute("id") == "name"
        press("keyboard key")
        tab_to("figma-preset")
        press(Keys.SPACE)
        tab_to("scope-me-read")
        press(Keys.SPACE)
        tab_to("create")
        press(Keys.ENTER)
        field = page.visible("reveal-key")
        key = str(field.get_attribute("value"))
        tab_to("done")
        press(Keys.ENTER)
        page.wait.until(ec.invisibility_of_element_located((By.ID, "reveal")))
        assert page.driver.switch_to.active_element.get_attribute("id") == "new-key"
        return key

    key = await step(create)
    assert await status_with(http, gateway, key) == 200
    listed = await step(page.table_text)
    assert "keyboard key" in listed and "actor_tokens:create" in listed


async def test_every_control_has_a_label(
    driver: webdriver.Chrome, gateway: RunningGateway, host: HostIdentity
) -> None:
    page = Page(driver, gateway.proxy)
    await step(page.sign_in, host.token(unique("lee")))
    unlabelled = await step(
        page.driver.execute_script,
        "return [...document.querySelectorAll('input, select, textarea, button')]"
        ".filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')"
        " && !el.textContent.trim()).map(el => el.id || el.outerHTML)",
    )
    assert unlabelled == []


async def test_signed_out_shows_the_sign_in_link(
    driver: webdriver.Chrome, gateway: RunningGateway, host: HostIdentity
) -> None:
    page = Page(driver, gateway.proxy)

    def signed_out() -> str:
        page.driver.get(page.url)
        page.visible("signed-out")
        page.screenshot("signed-out")
        return str(page.by_id("sign-in").get_attribute("href"))

    href = await step(signed_out)
    assert href == f"{host.url}/login?return_to=%2Faccount%2Fapi-keys"


async def test_a_narrow_window_shows_cards(
    driver: webdriver.Chrome, gateway: RunningGateway, host: HostIdentity
) -> None:
    user = unique("nia")
    await gateway.create_key(user, ["me:read", "projects:read"], name="phone key")
    page = Page(driver, gateway.proxy)

    def narrow() -> tuple[str, str, int]:
        page.driver.set_window_size(390, 900)
        page.sign_in(host.token(user))
        row = page.row("phone key")
        page.screenshot("narrow")
        head = page.driver.find_element(By.CSS_SELECTOR, "#keys thead")
        width = int(page.driver.execute_script("return document.documentElement.scrollWidth"))
        return (
            str(head.value_of_css_property("display")),
            str(row.value_of_css_property("display")),
            width,
        )

    head_display, row_display, width = await step(narrow)
    assert head_display == "none" and row_display == "block"
    assert width <= 390  # nothing scrolls sideways


async def test_the_owner_disables_and_enables_a_key_and_sees_expiry_ahead(
    driver: webdriver.Chrome,
    gateway: RunningGateway,
    host: HostIdentity,
    http: aiohttp.ClientSession,
) -> None:
    user = unique("tog")
    soon = await gateway.create_key(user, ["me:read"], name="soon", expires_in_days=3)
    later = await gateway.create_key(user, ["me:read"], name="later", expires_in_days=30)
    page = Page(driver, gateway.proxy)
    await step(page.sign_in, host.token(user))
    soon_row = await step(page.row, "soon")
    assert "expires soon" in soon_row.text
    assert "expires soon" not in (await step(page.row, "later")).text
    assert await status_with(http, gateway, soon["key"]) == 200
    title = await step(page.confirm, "soon", "toggle")
    assert title == "Disable “soon”?"
    await step(lambda: page.wait.until(lambda d: "disabled" in page.row("soon").text.lower()))
    for _ in range(40):  # on every process within a second
        if await status_with(http, gateway, soon["key"]) == 401:
            break
        await asyncio.sleep(0.025)
    else:
        pytest.fail("the disabled key still works")
    assert await status_with(http, gateway, later["key"]) == 200
    await step(page.screenshot, "disabled-key")
    button = await step(
        lambda: page.row("soon").find_element(By.CSS_SELECTOR, "button[data-action=toggle]")
    )
    assert await step(lambda: button.text) == "Enable"
    await step(button.click)  # enabling asks nothing
    await step(
        lambda: page.wait.until(
            lambda d: (
                page.row("soon").find_element(By.CSS_SELECTOR, "button[data-action=toggle]").text
                == "Disable"
            )
        )
    )
    for _ in range(40):
        if await status_with(http, gateway, soon["key"]) == 200:
            break
        await asyncio.sleep(0.025)
    else:
        pytest.fail("the enabled key is still refused")


async def test_the_table_fits_1280_px_with_last_used_times(
    driver: webdriver.Chrome, gateway: RunningGateway, host: HostIdentity
) -> None:
    user = unique("wide")
    for name in ("figma plugin for the design team", "ci"):
        key = await gateway.create_key(user, ["me:read", "projects:read", "projects:write"],
                                       name=name, description="used every day")  # fmt: skip
        async with gateway.pool.acquire() as conn:
            await conn.execute(
                "UPDATE api_keys SET last_used_at = now() WHERE id = $1::uuid", key["id"]
            )
    page = Page(driver, gateway.proxy)

    def wide() -> tuple[int, int, list[str]]:
        page.driver.set_window_size(1280, 1000)
        page.sign_in(host.token(user))
        page.row("ci")
        page.screenshot("desktop-last-used")
        scroll, client = page.driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        buttons = [b.text for b in page.driver.find_elements(By.CSS_SELECTOR, "#keys button")]
        return int(scroll), int(client), buttons

    scroll, client, buttons = await step(wide)
    assert scroll <= client  # no sideways scrollbar
    assert buttons.count("Delete") == 2 and buttons.count("Disable") == 2
    assert "within a minute" in await step(page.table_text)


async def test_the_create_form_resets_closes_on_escape_and_shows_its_errors(
    driver: webdriver.Chrome, gateway: RunningGateway, host: HostIdentity
) -> None:
    page = Page(driver, gateway.proxy)
    await step(page.sign_in, host.token(unique("form")))

    def check() -> dict[str, object]:
        seen: dict[str, object] = {}
        page.by_id("new-key").click()
        expiry = Select(page.visible("expiry"))
        seen["default"] = expiry.first_selected_option.text
        expiry.select_by_value("custom")
        custom = page.by_id("custom-date")
        page.driver.execute_script(
            "arguments[0].value = '2020-01-01';"
            " arguments[0].dispatchEvent(new Event('input'))", custom
        )  # fmt: skip
        seen["past"] = page.by_id("expiry-result").text
        expiry.select_by_value("30")
        page.by_id("name").send_keys("no scopes")
        page.by_id("create").click()
        active = page.driver.switch_to.active_element
        seen["focus"] = (active.get_attribute("type"), active.get_attribute("name"))
        seen["in view"] = page.driver.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            " return r.top >= 0 && r.bottom <= window.innerHeight", active
        )  # fmt: skip
        seen["scope error"] = page.by_id("scopes-error").text
        active.send_keys(Keys.ESCAPE)
        page.wait.until(ec.invisibility_of_element_located((By.ID, "create-panel")))
        seen["focus after escape"] = page.driver.switch_to.active_element.get_attribute("id")
        page.by_id("new-key").click()
        seen["default again"] = Select(page.visible("expiry")).first_selected_option.text
        seen["icon"] = page.driver.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute(
            "href"
        )
        return seen

    seen = await step(check)
    assert seen["default"] == seen["default again"] == "30 days"
    assert seen["past"] == "Choose a date from tomorrow to 365 days from now."
    assert seen["focus"] == ("checkbox", "scopes") and seen["scope error"]
    assert seen["in view"] is True  # the field in error, not only its message
    assert seen["focus after escape"] == "new-key"
    async with aiohttp.ClientSession() as http, http.get(str(seen["icon"])) as response:
        assert response.status == 200 and response.content_type == "image/svg+xml"


async def test_each_key_shows_its_30_days_and_a_daily_chart(
    driver: webdriver.Chrome,
    gateway: RunningGateway,
    host: HostIdentity,
    http: aiohttp.ClientSession,
) -> None:
    user = unique("use")
    key = await gateway.create_key(user, ["me:read"], name="reports")
    for _ in range(5):
        assert await status_with(http, gateway, key["key"]) == 200
    for _ in range(2):
        async with http.get(gateway.proxy + "/v1/organizations", headers=bearer(key["key"])) as r:
            assert r.status == 403
    await gateway.runtime.usage.flush(gateway.pool)
    async with gateway.pool.acquire() as conn:  # three days ago, as if counted then
        await conn.execute(
            "INSERT INTO key_usage (key_id, hour, allowed, denied, rate_limited)"
            " VALUES ($1::uuid, date_trunc('hour', now() - interval '3 days'), 40, 3, 2)",
            key["id"],
        )
    page = Page(driver, gateway.proxy)

    def chart() -> tuple[str, str, int, int, list[str]]:
        page.driver.set_window_size(1280, 1000)
        page.sign_in(host.token(user))
        toggle = page.row("reports").find_element(By.CSS_SELECTOR, "button[data-action=usage]")
        label = str(toggle.text)
        toggle.click()
        figure = page.visible(f"usage-{key['id']}")
        page.screenshot("usage-chart")
        bars = len(figure.find_elements(By.CSS_SELECTOR, "svg rect"))
        rows = figure.find_elements(By.CSS_SELECTOR, "figure.usage > div > table > tbody > tr")
        counts = [
            "/".join(
                str(td.get_attribute("textContent")) for td in r.find_elements(By.TAG_NAME, "td")
            )
            for r in rows
        ]
        return label, str(toggle.get_attribute("aria-expanded")), bars, len(rows), counts

    label, expanded, bars, days, cells = await step(chart)
    assert label == "52 requests in 30 days" and expanded == "true"
    assert bars == 4  # allowed and refused, on two days
    assert days == 30 and [c for c in cells if c != "0/0"] == ["40/5", "5/2"]
    caption = await step(
        lambda: page.driver.find_element(By.CSS_SELECTOR, ".usage table caption").get_attribute(
            "textContent"
        )
    )
    assert "45 allowed, 7 refused" in str(caption)
    await step(lambda: page.row("reports").find_element(
        By.CSS_SELECTOR, "button[data-action=usage]").click())  # fmt: skip
    assert await step(lambda: page.driver.find_elements(By.ID, f"usage-{key['id']}")) == []
