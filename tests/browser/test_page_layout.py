"""The page fits (§11), measured in a real headless Chromium: five realistic keys — four
scopes each, descriptions, long names, one in a rotation's grace, one blocked by the key
policy, last-used times, the networks a key was used from — at the desktop widths
people use and on a 390 px phone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.browser.test_api_keys_page import Page, status_with, step
from tests.hostapp import HostIdentity, host
from tests.support import (
    RecordingUpstream,
    RunningGateway,
    admin_headers,
    bearer,
    make_config,
    running_gateway,
    unique,
)

__all__ = ["host"]  # a fixture
SCOPES = ["me:read", "projects:read", "projects:write", "actor_tokens:create"]
KEYS = [
    ("Figma plugin — design team's shared work laptop (Berlin office)",
     "Used by the design systems team to sync tokens from the component library every hour."),
    ("ci-pipeline-production-deploy-eu-west-1", "GitHub Actions: deploys and smoke tests."),
    ("Reporting", "Nightly usage export to the data warehouse; owner: analytics."),
    ("Local development", ""),
    ("A key whose name goes on and on without any natural place to break it at all",
     "x" * 120),
]  # fmt: skip
DESKTOP = [1024, 1280, 1440, 1920]
NETWORKS = ["2001:db8:85a3:8d3:1319:8a2e:370:7348", "203.0.113.7", "198.51.100.20"]


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream, host: HostIdentity
) -> AsyncIterator[RunningGateway]:
    """The page's gateway with a key policy (a key made without an expiry is blocked)
    and the new-network notice on, behind a trusted balancer (the test)."""
    config = make_config(
        tmp_path,
        database_url,
        upstream.url,
        self_service=host.session_config(),
        key_policy={"max_lifetime_days": 3650, "new_network_notice": {"enabled": True}},
        trusted_proxies=["127.0.0.1/32"],
    )
    async with running_gateway(config) as running:
        yield running


@pytest.fixture
async def five_keys(gateway: RunningGateway, http: aiohttp.ClientSession) -> tuple[str, str]:
    """(the user, the id of the key in its rotation's grace)."""
    user = unique("five")
    made = []
    for name, description in KEYS:
        extra: dict[str, Any] = {"description": description} if description else {}
        if name != KEYS[3][0]:  # made without an expiry: over the policy, blocked
            extra["expires_in_days"] = 90
        made.append(await gateway.create_key(user, SCOPES, name=name, **extra))
    for key in made[:3]:
        assert await status_with(http, gateway, key["key"]) == 200
    await gateway.runtime.usage.flush(gateway.pool)
    async with gateway.pool.acquire() as conn:
        await conn.execute(
            "UPDATE api_keys SET last_used_at = now(),"
            " last_used_address = '2001:db8:85a3:8d3:1319:8a2e:370:7348'"
            " WHERE user_id = $1 AND name <> $2",
            user, KEYS[3][0],
        )  # fmt: skip
    async with http.post(
        f"{gateway.admin}/admin/v1/keys/{made[2]['id']}/rotate",
        json={"grace_seconds": 3600},
        headers=admin_headers(),
    ) as r:
        assert r.status == 201, await r.text()
        replacement = (await r.json())["key"]
    for client in NETWORKS:  # the key that replaced it, used from three networks
        async with http.get(
            gateway.proxy + "/v1/me", headers={**bearer(replacement), "X-Forwarded-For": client}
        ) as used:
            assert used.status == 200
    assert gateway.store.networks is not None
    await gateway.store.networks.flush(gateway.pool)
    pool = {"remaining": 1234567, "refill": {"interval": "month", "amount": 2000000, "day": 28}}
    async with http.put(
        f"{gateway.admin}/admin/v1/users/{user}/credits", json=pool, headers=admin_headers()
    ) as r:
        assert r.status == 200, await r.text()  # the user's credit pool, shown above the keys
    return user, made[2]["id"]


def _measure(page: Page) -> dict[str, Any]:
    found: dict[str, Any] = page.driver.execute_script(
        """
        const doc = document.documentElement, view = doc.clientWidth;
        const panel = document.getElementById('keys-panel');
        const buttons = [...document.querySelectorAll('#keys button')].map(b => {
          const r = b.getBoundingClientRect();
          return {text: b.textContent.trim(), left: r.left, right: r.right, width: r.width,
                  inner: b.scrollWidth, outer: b.clientWidth};
        });
        const pool = document.getElementById('pool');
        return {scroll: doc.scrollWidth, view: view, panelScroll: panel.scrollWidth,
                panelClient: panel.clientWidth, panelRight: panel.getBoundingClientRect().right,
                buttons: buttons, pool: pool.hidden ? null : pool.textContent,
                poolRight: pool.getBoundingClientRect().right};
        """
    )
    return found


@pytest.mark.parametrize("width", DESKTOP)
async def test_five_keys_fit_every_desktop_width(
    driver: webdriver.Chrome,
    gateway: RunningGateway,
    host: HostIdentity,
    five_keys: tuple[str, str],
    width: int,
) -> None:
    user, _ = five_keys
    page = Page(driver, gateway.proxy)

    def at_width() -> dict[str, Any]:
        page.driver.set_window_size(width, 1000)
        page.sign_in(host.token(user))
        page.row("Reporting")
        page.screenshot(f"five-keys-{width}")
        found = _measure(page)
        group = page.driver.find_element(By.CSS_SELECTOR, "#keys .group-row")
        page.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", group)
        page.screenshot(f"rotating-{width}")
        found["order"] = [
            (r.get_attribute("class"), r.text.split("\n")[0])
            for r in page.driver.find_elements(By.CSS_SELECTOR, "#keys tbody tr")
        ]
        replaced = page.driver.find_element(By.CSS_SELECTOR, "#keys tr.replaced")
        found["replaced"] = replaced.find_element(By.CSS_SELECTOR, "td[data-label=Status]").text
        found["replaced_buttons"] = [b.text for b in replaced.find_elements(By.TAG_NAME, "button")]
        found["addresses"] = [
            a.text for a in page.driver.find_elements(By.CSS_SELECTOR, "#keys .last-address")
        ]
        blocked = page.row(KEYS[3][0]).find_element(By.CSS_SELECTOR, "td[data-label=Status]")
        found["blocked"] = blocked.text
        return found

    found = await step(at_width)
    assert found["addresses"] and set(found["addresses"]) == {
        "from 2001:db8:85a3:8d3:1319:8a2e:370:7348"
    }
    assert found["scroll"] <= found["view"], f"{found['scroll'] - found['view']} px too wide"
    assert found["panelScroll"] <= found["panelClient"], "the table scrolls sideways"
    deletes = [b for b in found["buttons"] if b["text"] == "Delete"]
    assert len(deletes) == 6  # the five, and the key that replaced one
    for button in found["buttons"]:
        assert button["right"] <= min(found["view"], found["panelRight"]) + 0.5, button
        assert button["inner"] <= button["outer"], button  # its label whole
    # The key in its rotation's grace, apart from (after) the key that replaced it.
    classes = [cls for cls, _ in found["order"]]
    group = classes.index("group-row")
    assert classes[group + 1 :] == ["replaced"] and "replaced" not in classes[:group]
    assert [name for _, name in found["order"]].count("Reporting") == 2
    assert found["replaced"].startswith("Replaced") and "works until" in found["replaced"]
    assert found["replaced_buttons"][-1] == "Delete" and "Rotate" not in found["replaced_buttons"]
    assert found["blocked"].startswith("Blocked") and "3650-day key policy" in found["blocked"]
    _pool_shown(found)


def _pool_shown(found: dict[str, Any]) -> None:
    """The user's credit pool, in one sentence within the page's width."""
    assert found["pool"] is not None and "shared by your keys" in found["pool"], found["pool"]
    assert "on day 28 of each month" in found["pool"] and "1" in found["pool"]
    assert found["poolRight"] <= found["view"] + 0.5, found


async def test_five_keys_as_cards_on_a_phone_with_a_full_width_chart(
    driver: webdriver.Chrome,
    gateway: RunningGateway,
    host: HostIdentity,
    five_keys: tuple[str, str],
) -> None:
    user, _ = five_keys
    page = Page(driver, gateway.proxy)

    def phone() -> dict[str, Any]:
        page.driver.set_window_size(390, 900)
        page.sign_in(host.token(user))
        row = page.row("Reporting")
        row.find_element(By.CSS_SELECTOR, "button[data-action=usage]").click()
        chart = page.wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".usage-chart"))
        page.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart)
        page.screenshot("five-keys-390")
        found = _measure(page)
        found.update(page.driver.execute_script(
            """
            const chart = document.querySelector('.usage-chart');
            const card = chart.closest('tr').getBoundingClientRect();
            const box = chart.getBoundingClientRect();
            const ticks = [...chart.querySelectorAll('.tick')].map(
              t => t.getBoundingClientRect().height);
            const nets = [...document.querySelectorAll('.networks li')].map(
              n => n.getBoundingClientRect().right);
            return {chartWidth: box.width, chartHeight: box.height, cardWidth: card.width,
                    smallestLabel: Math.min(...ticks), networks: nets,
                    cardRight: card.right};
            """
        ))  # fmt: skip
        return found

    found = await step(phone)
    assert found["scroll"] <= found["view"], f"{found['scroll'] - found['view']} px too wide"
    for button in found["buttons"]:
        assert button["right"] <= found["view"] + 0.5 and button["inner"] <= button["outer"]
    assert found["chartWidth"] >= found["cardWidth"] - 40, found  # the card's width, less padding
    assert found["smallestLabel"] >= 10, found
    # The three networks under the chart, each inside the card (an IPv6 /48 included).
    assert len(found["networks"]) == len(NETWORKS), found
    assert max(found["networks"]) <= found["cardRight"] + 0.5, found
    _pool_shown(found)
