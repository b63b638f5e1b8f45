"""The console's layout at a desktop and a phone width, and what it draws from the status:
the traffic chart and each mailbox's backlog, with the numbers this test caused.

Debian's Chromium driven by Playwright (as tests/test_console.py does) against the gateway of
the ``running`` fixture. Mail goes in with smtplib and out with poplib; the backlog alarm is
raised by the journal's own alarm check, run in-process on a mailbox whose own threshold is
one second. Each view (the login form, the dashboard, the mailbox table, the audit log, the
settings, two dialogs) is checked at 1280 x 900 and 420 x 900 for horizontal overflow
(``document.documentElement.scrollWidth <= window.innerWidth``: the page never scrolls
sideways) and photographed into tests/artifacts/.
"""

from __future__ import annotations

import contextlib
import hashlib
import poplib
import re
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import trio

from gateway.events import now
from gateway.services.alarms import Alarms

from .gateway_helpers import Running
from .test_console import ARTIFACTS, CHROMIUM, TIMEOUT_MS, require_browser

with contextlib.suppress(ImportError):  # require_browser fails the test, saying what to install
    from playwright.sync_api import Page, expect, sync_playwright

DESKTOP = (1280, 900)
PHONE = (420, 900)
# A name and a description as long as people write them: they must wrap, not widen the page.
NAME = "Legal department journal (Zurich, Geneva and Lugano offices)"
DESCRIPTION = (
    "Every message the legal department's Exchange journal rule sends, kept for ten years; "
    "the archive collects it every fifteen minutes"
)
TIME_FORMAT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")


@dataclass(frozen=True)
class Caused:
    """What the test did before the browser looked."""

    mailbox_id: str
    address: str
    sent: int
    retrieved: int
    oldest_waiting_at: datetime
    fingerprint: str


@pytest.mark.slow
async def test_console_fits_a_desktop_and_a_phone(running: Running) -> None:
    require_browser()
    caused = await _cause_traffic_and_an_alarm(running)
    url = f"https://127.0.0.1:{running.port('admin')}/"
    await trio.to_thread.run_sync(_drive, url, running.admin_password, running.port("smtp"), caused)


async def _cause_traffic_and_an_alarm(running: Running) -> Caused:
    archive = running.archive
    info, password = await archive.create_mailbox(NAME, DESCRIPTION)
    address = f"mbx-{info.mailbox_id}@localhost"
    sent, retrieved = 3, 2
    await trio.to_thread.run_sync(_send, running.port("smtp"), address, sent)
    await trio.to_thread.run_sync(
        _retrieve, running.port("pop3s"), running.context(), info.mailbox_id, password, retrieved
    )
    # Its own age threshold: one second; the journal's check (run here, 10 s ahead) raises
    # the alarm, and the periodic one agrees with it from then on.
    await archive.update_mailbox(info.mailbox_id, alarms={"max_waiting_age": 1.0})
    await Alarms(archive, running.gateway.config.alarms, 0).check_mailboxes(
        now() + timedelta(seconds=10)
    )
    assert archive.state.alarms.get(info.mailbox_id) == {"age"}
    oldest = await archive.oldest_waiting_at(info.mailbox_id)
    assert oldest is not None
    der = ssl.PEM_cert_to_DER_cert(running.cafile.read_text())
    fingerprint = hashlib.sha256(der).digest().hex(":").upper()
    return Caused(info.mailbox_id, address, sent, retrieved, oldest, fingerprint)


def _send(port: int, address: str, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        for n in range(count):
            smtp.sendmail(
                "journal@example.org", [address], b"Subject: %d\r\n\r\nkept %d\r\n" % (n, n)
            )


def _retrieve(
    port: int, context: ssl.SSLContext, mailbox_id: str, password: str, count: int
) -> None:
    """RETR the first ``count`` messages and QUIT without DELE: they stay waiting."""
    pop = poplib.POP3_SSL("localhost", port, timeout=10, context=context)
    try:
        pop.user(mailbox_id)
        pop.pass_(password)
        for n in range(1, count + 1):
            pop.retr(n)
    finally:
        pop.quit()


def _drive(url: str, password: str, smtp_port: int, caused: Caused) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=TIMEOUT_MS)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            for name, (width, height) in (("phone", PHONE), ("desktop", DESKTOP)):
                context = browser.new_context(
                    ignore_https_errors=True, viewport={"width": width, "height": height}
                )
                page = context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.on(
                    "console",
                    lambda message: (
                        problems.append(f"console: {message.text}")
                        if message.type == "error"
                        else None
                    ),
                )
                page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                _views(page, name, url, password)
                if name == "desktop":
                    _traffic_and_backlog(page, smtp_port, caused)
                context.close()
        finally:
            browser.close()
    assert problems == []


def _fits(page: Page, label: str) -> None:
    """No horizontal overflow, and a screenshot to look at."""
    widths: dict[str, int] = page.evaluate(
        """() => ({
            scroll: document.documentElement.scrollWidth,
            body: document.body.scrollWidth,
            inner: window.innerWidth,
        })"""
    )
    page.screenshot(path=ARTIFACTS / f"console-{label}.png")
    assert widths["scroll"] <= widths["inner"], (label, widths)
    assert widths["body"] <= widths["inner"], (label, widths)


def _in_view(page: Page, testid: str) -> None:
    page.get_by_test_id(testid).first.scroll_into_view_if_needed()


def _views(page: Page, name: str, url: str, password: str) -> None:
    page.goto(url)
    expect(page.get_by_test_id("login")).to_be_visible()
    _fits(page, f"{name}-login")
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("audit-state")).to_have_text("live")
    row = page.get_by_test_id("mailbox-row").filter(has_text=NAME)
    expect(row.get_by_test_id("cell-messages")).to_have_text("3")
    expect(page.get_by_test_id("listener-tls")).to_have_count(5)

    page.evaluate("() => window.scrollTo(0, 0)")
    _fits(page, f"{name}-dashboard")
    # Every listener's TLS column is inside its card, not cut off (the issue at 1280 px).
    boxes = page.evaluate(
        """() => {
            const card = document.querySelector('.listeners').getBoundingClientRect();
            const wrap = document.querySelector('.listeners .table-wrap');
            const cells = [...document.querySelectorAll('[data-testid=listener-tls]')];
            return {
                card: card.right,
                cells: cells.map((cell) => cell.getBoundingClientRect().right),
                inner: wrap.scrollWidth - wrap.clientWidth,
            };
        }"""
    )
    assert boxes["inner"] == 0, boxes
    assert all(right <= boxes["card"] for right in boxes["cells"]), boxes
    # The navigation is whole on screen at either width.
    width: int = page.evaluate("() => window.innerWidth")
    for link in page.locator("nav.sections a").all():
        box = link.bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, box

    _in_view(page, "mailbox-table")
    _fits(page, f"{name}-mailboxes")
    _row_on_screen(page, name)
    _in_view(page, "audit-table")
    _fits(page, f"{name}-audit")
    page.get_by_test_id("audit-window").select_option("all")
    expect(page.get_by_test_id("audit-state")).to_have_text("live")
    _fits(page, f"{name}-audit-everything")
    _in_view(page, "token-table")
    _fits(page, f"{name}-settings")

    page.get_by_test_id("new-mailbox").click()
    expect(page.get_by_test_id("dialog-mailbox")).to_be_visible()
    _fits(page, f"{name}-dialog-mailbox")
    page.get_by_test_id("dialog-mailbox").get_by_role("button", name="Cancel").click()
    row.get_by_test_id("action-reset").click()
    expect(page.get_by_test_id("dialog-reset")).to_be_visible()
    _fits(page, f"{name}-dialog-reset")
    page.get_by_test_id("dialog-reset").get_by_role("button", name="Cancel").click()
    expect(page.get_by_test_id("dialog-reset")).to_be_hidden()


def _row_on_screen(page: Page, name: str) -> None:
    """The mailbox row: at the desktop width the whole table fits its card; on the phone
    every cell (the actions too) is on screen, reflowed into a card."""
    found: dict[str, Any] = page.evaluate(
        """() => {
            const wrap = document.querySelector('#mailboxes .table-wrap');
            const row = document.querySelector('[data-testid=mailbox-row]');
            const rights = [...row.querySelectorAll('td, button')]
                .map((node) => node.getBoundingClientRect().right);
            return {
                inner: wrap.scrollWidth - wrap.clientWidth,
                right: Math.max(...rights),
                wrapRight: wrap.getBoundingClientRect().right,
                head: getComputedStyle(document.querySelector('#mailboxes thead')).display,
            };
        }"""
    )
    assert found["inner"] == 0, found
    assert found["right"] <= found["wrapRight"] + 0.5, found
    assert (found["head"] == "none") == (name == "phone"), found


def _traffic_and_backlog(page: Page, smtp_port: int, caused: Caused) -> None:
    page.evaluate("() => window.scrollTo(0, 0)")
    sent, retrieved = str(caused.sent), str(caused.retrieved)
    expect(page.get_by_test_id("traffic-in-total")).to_have_text(sent)
    expect(page.get_by_test_id("traffic-out-total")).to_have_text(retrieved)
    chart = page.get_by_test_id("traffic-svg")
    expect(chart).to_have_attribute("data-in", sent)
    expect(chart).to_have_attribute("data-out", retrieved)
    # The newest minute's bars reach the top of a scale of 5 (3 in, 2 out: the nice ceiling).
    expect(page.get_by_test_id("traffic-peak")).to_have_text("5/min")
    box = chart.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] - 0.5, box["y"] + box["height"] / 2)
    expect(page.get_by_test_id("traffic-readout")).to_contain_text(
        f"{caused.sent} messages in, {caused.retrieved} out"
    )

    # The certificate card has the fingerprint `gateway status` prints.
    expect(page.get_by_test_id("stat-cert-sha256")).to_have_text(caused.fingerprint)

    # The backlog: three waiting (two retrieved, not deleted), the oldest one's age, the alarm.
    row = page.get_by_test_id("mailbox-row").filter(has_text=NAME)
    expect(row.get_by_test_id("cell-messages")).to_have_text(str(caused.sent))
    oldest = row.get_by_test_id("cell-oldest")
    expect(oldest).to_have_attribute("data-alarm", "age")
    expect(oldest).to_have_text(re.compile(r"^\d+ (s|min \d+ s)$"))
    title = oldest.locator("time").get_attribute("title")
    assert title is not None and title.endswith("Z")
    assert datetime.fromisoformat(title) == caused.oldest_waiting_at
    expect(row.get_by_test_id("badge-alarm")).to_have_text("alarm: age")

    # One time format on every card and row, RFC 3339 UTC in the tooltip.
    times = page.locator(
        "[data-testid=stat-version] time, [data-testid=stat-cert-expiry] time,"
        " [data-testid=audit-row] time"
    )
    assert times.count() > 3
    for node in times.all()[:20]:
        assert TIME_FORMAT.match(node.inner_text()), node.inner_text()
        exact = node.get_attribute("title") or ""
        assert exact == node.get_attribute("datetime") and exact.endswith("Z"), exact
        shown = datetime.fromisoformat(exact).strftime("%Y-%m-%d %H:%M:%S UTC")
        assert node.inner_text() == shown

    # One more message: the chart and the row follow without a reload.
    page.evaluate("() => { window.layoutProbe = 'no reload' }")
    _send(smtp_port, caused.address, 1)
    expect(page.get_by_test_id("traffic-in-total")).to_have_text(str(caused.sent + 1))
    expect(row.get_by_test_id("cell-messages")).to_have_text(str(caused.sent + 1))
    assert page.evaluate("() => window.layoutProbe") == "no reload"
    page.screenshot(path=ARTIFACTS / "console-desktop-traffic.png")
