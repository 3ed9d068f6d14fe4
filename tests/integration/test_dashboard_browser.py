"""The dashboard in a real browser: Debian's chromium driven by Playwright (no browser
download). One browser for the module; a screenshot of every test lands in
artifacts/dashboard/ (ignored by git)."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.integration.dashboard_helpers import (
    ARTIFACTS,
    HOSTILE_SKU,
    HOSTILE_SUMMARY,
    MINUTE,
    T0,
    fast_config,
    fill_known,
    new_kpi_window,
    running_dashboard,
)

pytestmark = pytest.mark.integration

WAIT_MS = 20_000  # generous bound for "it shows up"; nothing here measures time


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("Debian's chromium is missing: scripts/bootstrap installs it (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, settings, redis_client, request):
    fill_known(redis_client, settings.redis_prefix)
    with running_dashboard(settings, fast_config()) as (url, board):
        context = browser.new_context(viewport={"width": 1400, "height": 1500})
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
        page.problems = problems
        yield page
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        context.close()


def test_page_shows_the_funnel_and_kpis_in_redis_with_no_console_errors(page):
    assert page.text_content("#kpi-gmv .value") == "1,009.00"
    assert page.text_content("#kpi-orders .value") == "19"
    assert page.text_content("#kpi-uv .value") == "109"
    assert page.text_content("#kpi-payment_success_rate .value") == "89.5%"
    assert page.text_content("#funnel-overall [data-stage='visit'] .count") == "2,468"
    assert page.text_content("#funnel-rolling [data-stage='visit'] .count") == "20,000"
    assert "1,357" in page.text_content("#funnel-by tr[data-value='app']")
    assert page.text_content("#stock-legend [data-level='out'] b") == "2"
    assert page.locator("#kpi-gmv .spark canvas").count() == 1  # the sparkline drew
    assert page.locator("#fraud-chart canvas").count() == 1
    assert page.text_content("#connection") == "live"
    assert page.problems == []


def test_page_updates_in_place_when_redis_changes(page, settings, redis_client):
    page.evaluate("window.loadedOnce = 'still here'")  # gone if the page reloaded
    new_kpi_window(redis_client, settings.redis_prefix, gmv=31415.5)
    # Polled from outside the page: the page's CSP allows no string evaluation inside it.
    expect(page.locator("#kpi-gmv .value")).to_have_text("31,415.50", timeout=WAIT_MS)
    redis_client.hset(f"{settings.redis_prefix}stock:SKU-SAFE-1", "level", "out")
    expect(page.locator("#stock-legend [data-level='out'] b")).to_have_text("3", timeout=WAIT_MS)
    assert page.evaluate("window.loadedOnce") == "still here"
    assert page.problems == []


def test_funnel_shows_clean_conversion_with_the_gross_beside_it(page, settings, redis_client):
    """Issue 22: once the traffic flow flags sessions of the window, the funnel shows the clean
    stages and conversion, and the gross conversion beside it."""
    expect(page.locator("#funnel-window")).not_to_contain_text("gross")
    redis_client.set(f"{settings.redis_prefix}traffic:window:{T0 + 9 * MINUTE}", (
        b'{"metric":"traffic","window_start":%d,"window_end":%d,"flagged_orders":3,"flagged_gmv":300.0,'
        b'"flagged_sessions":13,"flagged_stages":{"visit":18,"product_view":18,"add_to_cart":10,"checkout":10,'
        b'"order":5,"payment":5}}' % (T0 + 9 * MINUTE, T0 + 10 * MINUTE)))
    expect(page.locator("#funnel-window")).to_contain_text(
        "overall conversion 7.96% (gross 8.10%, 18 flagged sessions left out)", timeout=WAIT_MS)
    expect(page.locator("#funnel-overall [data-stage='visit'] .count")).to_have_text("2,450")
    assert page.problems == []


def test_acknowledge_button_writes_the_ack_key(page, settings, redis_client):
    row = page.locator("#alerts-active tr[data-dedup-key='stock.out:SKU-OUT']")
    row.locator("button.ack").click()
    row.locator(".acked").wait_for(timeout=WAIT_MS)  # the page shows what Redis now holds
    ack = redis_client.get(f"{settings.redis_prefix}alerts:ack:stock.out:SKU-OUT")
    assert ack is not None and str(T0 + 7 * MINUTE).encode() in ack
    assert page.problems == []


def test_html_in_values_is_shown_as_text(page):
    summary = page.locator("#alerts-active tr[data-dedup-key='stock.low:SKU-9'] .alert-summary")
    assert summary.text_content() == HOSTILE_SUMMARY
    assert summary.locator("img, b").count() == 0
    assert page.locator(f"#stock-hot tr[data-sku='{HOSTILE_SKU}'] td").first.text_content() == HOSTILE_SKU
    assert page.locator("#alerts-recent li", has_text="<b>bold</b>").count() == 1
    assert page.evaluate("window.pwned === undefined")
    assert page.problems == []
