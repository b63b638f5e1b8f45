"""The admin console in a real browser: Debian's Chromium driven by Playwright, against a
gateway serving in the test's nursery.

Playwright's sync API runs in a worker thread (``trio.to_thread``) so the gateway keeps
serving in the trio loop meanwhile; mail goes in over SMTP with smtplib from the same thread.
The page is served with its strict Content-Security-Policy, and Chromium reports any
violation (an inline script or style, eval) as a console error, which fails the test.
Screenshots land in tests/artifacts/ for people to look at.
"""

from __future__ import annotations

import os
import re
import smtplib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from gateway.events import Actor, AdminRequestFailed, now
from gateway.services.metrics import MINUTES, MinuteCount, MinuteRing

from .gateway_helpers import Running

# Without playwright this test fails (below) saying what to install; an import error here
# would abort the collection of the whole suite instead.
try:
    from playwright.sync_api import Locator, Page, expect, sync_playwright

    _playwright_missing = ""
except ImportError as exc:
    _playwright_missing = str(exc)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 15_000
RESET_WARNING = "Every message stored so far in this mailbox becomes unreadable forever"
REPLAY_RECORDS = 16_000
# "Everything" over 16,000 records must be in and drawn within this. The issue saw it still
# replaying after 5 s. Unfiltered, the console asks only for the newest 1,000 (all it shows),
# measured at 0.3 s on a shared 2-CPU machine (the gateway, Chromium and pytest on it); a
# console that fetched all 16,000 again would take the gateway's 0.3 ms a record, 5 s: the
# bound is ten times the measure and under half of that.
REPLAY_BOUND_S = 3.0
# Filtered, the gateway sends every matching record (0.2 to 0.3 ms each, its websocket
# frames; the console draws in batches and adds a few hundred ms): 16,000 measured at 3.2 to
# 5.2 s. The bound is four times that: it catches a console that falls back to a row and a
# layout per record, not the speed of the gateway's feed.
REPLAY_FILTERED_BOUND_S = 20.0


def require_browser() -> None:
    """Missing tools fail the test, with what to install; they never skip it."""
    if _playwright_missing:
        pytest.fail(f"{_playwright_missing}: pip install -e '.[test]' (the Python package only)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")


@pytest.mark.slow
async def test_console_manages_a_mailbox_and_follows_the_audit_log(running: Running) -> None:
    require_browser()
    url = f"https://127.0.0.1:{running.port('admin')}/"
    await trio.to_thread.run_sync(_drive_console, url, running.admin_password, running.port("smtp"))


def _drive_console(url: str, password: str, smtp_port: int) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    expect.set_options(timeout=TIMEOUT_MS)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1366, "height": 768}
            )
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on(
                "console",
                lambda message: (
                    problems.append(f"console: {message.text}") if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            _scenario(page, url, password, smtp_port)
        finally:
            browser.close()
    assert problems == []


def _scenario(page: Page, url: str, password: str, smtp_port: int) -> None:
    response = page.goto(url)
    assert response is not None
    assert response.ok
    assert "script-src 'self'" in response.headers["content-security-policy"]

    # A wrong password is refused in words, then the right one gets in.
    _log_in(page, "not the password at all")
    expect(page.get_by_test_id("login-error")).to_have_text("Wrong password.")
    _log_in(page, password)
    expect(page.get_by_test_id("header-actor")).to_have_text("admin")
    expect(page.get_by_test_id("login")).to_be_hidden()
    expect(page.get_by_test_id("audit-state")).to_have_text("live")

    # A new mailbox: its password is shown once, behind an explicit confirmation.
    page.get_by_test_id("new-mailbox").click()
    page.get_by_test_id("mailbox-name").fill("Legal journal")
    page.get_by_test_id("mailbox-description").fill("Journal of the legal department")
    page.get_by_test_id("mailbox-submit").click()
    first_password = _take_secret(page)
    row = page.get_by_test_id("mailbox-row").filter(has_text="Legal journal")
    expect(row).to_have_count(1)
    mailbox_id = row.get_attribute("data-mailbox-id")
    address = row.get_attribute("data-address")
    assert mailbox_id is not None
    assert address == f"mbx-{mailbox_id}@localhost"
    expect(row.get_by_test_id("cell-messages")).to_have_text("0")
    expect(_audit_rows(page, "MailboxCreated")).to_have_count(1)

    # The server's own words when it refuses: an active mailbox cannot be deleted.
    row.get_by_test_id("action-delete").click()
    dialog = page.get_by_test_id("dialog-delete")
    expect(dialog.get_by_test_id("delete-active-note")).to_be_visible()
    dialog.get_by_test_id("delete-submit").click()
    expect(dialog.get_by_test_id("dialog-error")).to_contain_text(
        "must be suspended before it can be deleted"
    )
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(_audit_rows(page, "AdminRequestFailed")).to_have_count(1)

    # Mail arrives over SMTP; the table and the audit view follow without a reload.
    page.evaluate("() => { window.consoleTestProbe = 'no reload' }")
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
        smtp.sendmail(
            "a@example.org", [address], b"Subject: console test\r\n\r\nKept for years.\r\n"
        )
    expect(row.get_by_test_id("cell-messages")).to_have_text("1")
    accepted = _audit_rows(page, "MessageAccepted")
    expect(accepted).to_have_count(1)
    expect(accepted).to_contain_text("Legal journal")
    assert page.evaluate("() => window.consoleTestProbe") == "no reload"
    page.screenshot(path=ARTIFACTS / "console-dashboard.png")
    page.evaluate("() => document.getElementById('mailboxes').scrollIntoView()")
    page.screenshot(path=ARTIFACTS / "console-mailboxes.png")

    # Server-side filters: only MessageAccepted, then everything about this one mailbox.
    page.get_by_test_id("audit-types").select_option("MessageAccepted")
    expect(page.get_by_test_id("audit-state")).to_have_text("live")
    expect(page.get_by_test_id("audit-row")).to_have_count(1)
    expect(accepted).to_have_count(1)
    page.get_by_test_id("audit-types").select_option("")
    page.get_by_test_id("audit-mailbox").select_option(mailbox_id)
    expect(page.get_by_test_id("audit-state")).to_have_text("live")
    expect(_audit_rows(page, "MailboxCreated")).to_have_count(1)
    expect(_audit_rows(page, "AdminLogin")).to_have_count(0)
    page.get_by_test_id("audit-mailbox").select_option("")
    expect(_audit_rows(page, "AdminLogin")).to_have_count(2)

    # A reload logs in again with the session token, without the password.
    page.reload()
    expect(page.get_by_test_id("header-actor")).to_have_text("admin")
    expect(page.get_by_test_id("login")).to_be_hidden()
    row = page.get_by_test_id("mailbox-row").filter(has_text="Legal journal")
    expect(row.get_by_test_id("cell-messages")).to_have_text("1")

    # Suspend.
    row.get_by_test_id("action-suspend").click()
    expect(row.get_by_test_id("cell-status")).to_have_text("suspended")
    expect(page.get_by_test_id("notice").filter(has_text="Suspended")).to_be_visible()

    # Reset the password: the warning first, confirmed explicitly; the server's after.
    row.get_by_test_id("action-reset").click()
    dialog = page.get_by_test_id("dialog-reset")
    expect(dialog.get_by_test_id("reset-warning")).to_contain_text(RESET_WARNING)
    expect(dialog.get_by_test_id("reset-warning")).to_contain_text("1 message (")
    expect(dialog.get_by_test_id("reset-submit")).to_be_disabled()
    dialog.get_by_test_id("reset-confirm").check()
    dialog.get_by_test_id("reset-submit").click()
    expect(page.get_by_test_id("secret-warning")).to_contain_text("can never be decrypted again")
    expect(page.get_by_test_id("secret-warning")).to_contain_text(re.compile(r"\b1 message"))
    second_password = _take_secret(page)
    assert second_password != first_password
    expect(_audit_rows(page, "MailboxKeyReset")).to_have_count(1)

    # The message sealed to the retired key: not counted as readable (POP3 does not list
    # it), shown apart as unreadable.
    expect(row.get_by_test_id("cell-messages")).to_have_text("0")
    expect(row.get_by_test_id("cell-unreadable")).to_have_text("+1 unreadable")

    # Delete: refused while messages remain (the unreadable one too).
    row.get_by_test_id("action-delete").click()
    dialog = page.get_by_test_id("dialog-delete")
    expect(dialog.get_by_test_id("delete-active-note")).to_be_hidden()
    expect(dialog).to_contain_text("Also purge the 1 stored message")
    expect(dialog).to_contain_text("1 of them unreadable")
    dialog.get_by_test_id("delete-submit").click()
    expect(dialog.get_by_test_id("dialog-error")).to_contain_text("purge")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()

    # Purge the unreadable messages: confirmed, then gone from the row and audited.
    row.get_by_test_id("action-purge-unreadable").click()
    expect(page.get_by_test_id("dialog-confirm")).to_contain_text("nobody can ever read them")
    page.get_by_test_id("confirm-submit").click()
    expect(
        page.get_by_test_id("notice").filter(has_text="Purged 1 unreadable message")
    ).to_be_visible()
    expect(row.get_by_test_id("cell-unreadable")).to_have_count(0)
    expect(row.get_by_test_id("action-purge-unreadable")).to_have_count(0)
    expect(_audit_rows(page, "MessagesExpunged")).to_have_count(1)

    # Delete: nothing left to purge.
    row.get_by_test_id("action-delete").click()
    expect(dialog).to_contain_text("Also purge the 0 stored messages")
    dialog.get_by_test_id("delete-submit").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("mailbox-row")).to_have_count(0)
    expect(page.get_by_test_id("mailbox-empty")).to_be_visible()
    expect(page.get_by_test_id("notice").filter(has_text="Deleted mailbox")).to_be_visible()
    expect(_audit_rows(page, "MailboxDeleted")).to_have_count(1)

    # An API token from the settings: shown once, listed, revoked.
    page.get_by_test_id("new-token").click()
    page.get_by_test_id("token-name").fill("backup script")
    page.get_by_test_id("token-days").fill("30")
    page.get_by_test_id("token-submit").click()
    assert _take_secret(page).startswith("gwt_")
    expect(page.get_by_test_id("token-row")).to_have_count(1)
    page.get_by_test_id("token-revoke").click()
    page.get_by_test_id("confirm-submit").click()
    expect(page.get_by_test_id("token-row")).to_have_count(0)

    # Log out: the login form, also after a reload (the session token is gone).
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login")).to_be_visible()
    page.reload()
    expect(page.get_by_test_id("login")).to_be_visible()
    expect(page.get_by_test_id("header-actor")).to_be_hidden()


@pytest.mark.slow
async def test_the_audit_view_replays_16000_records_in_seconds(running: Running) -> None:
    """Issue 15: "Everything" must not be a minute of "replaying history..." beside rows that
    are not the newest. The records are appended in-process through the archive."""
    require_browser()
    archive = running.archive

    async def append(first: int, count: int) -> None:
        for n in range(first, first + count):
            await archive.append_control(
                AdminRequestFailed(
                    at=now(),
                    actor=Actor(kind="admin", address="127.0.0.1"),
                    op="mailbox.get",
                    code="no-such-mailbox",
                    message=f"replay record {n}",
                ),
                durable=False,
            )

    async with trio.open_nursery() as nursery:
        for first in range(0, REPLAY_RECORDS, 1000):
            nursery.start_soon(append, first, 1000)
    await archive.sync_control()
    url = f"https://127.0.0.1:{running.port('admin')}/"
    await trio.to_thread.run_sync(_replay, url, running.admin_password)


def _replay(url: str, password: str) -> None:
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(
                ignore_https_errors=True, viewport={"width": 1280, "height": 900}
            )
            page.goto(url)
            _log_in(page, password)
            state = page.get_by_test_id("audit-state")
            expect(state).to_have_text("live")
            capped = page.get_by_test_id("audit-capped")
            expect(capped).to_be_hidden()  # 200 records: all of them shown
            rows = page.get_by_test_id("audit-row")
            expect(rows).to_have_count(200)

            started = time.monotonic()
            page.get_by_test_id("audit-window").select_option("all")
            expect(state).to_have_text("live", timeout=REPLAY_BOUND_S * 1000)
            seen = time.monotonic() - started
            drawn = int(page.get_by_test_id("audit-table").get_attribute("data-replay-ms") or -1)
            page.screenshot(path=ARTIFACTS / "console-audit-16000.png")
            print(f"replay of {REPLAY_RECORDS} records: {drawn} ms in the page, {seen:.2f} s seen")
            assert 0 <= drawn <= REPLAY_BOUND_S * 1000

            # The newest 1,000, newest first, without a gap; the note says so, with the total.
            seqs = [int(seq) for seq in rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")]
            assert len(seqs) == 1000
            newest = seqs[0]
            assert newest >= REPLAY_RECORDS
            assert seqs == list(range(newest, newest - 1000, -1))
            newest_failed = int(
                page.locator(
                    '[data-testid="audit-row"][data-type="AdminRequestFailed"]'
                ).first.get_attribute("data-seq")
                or -1
            )
            expect(capped).to_be_visible()
            expect(page.get_by_test_id("audit-matched")).to_have_text(f"{newest + 1:,}")

            # Filtered, the gateway sends every matching record (16,000 of them here): the
            # console keeps up with it, drawing in batches; the time is the gateway's.
            started = time.monotonic()
            page.get_by_test_id("audit-types").select_option("AdminRequestFailed")
            expect(state).to_have_text("live", timeout=REPLAY_FILTERED_BOUND_S * 1000)
            seen = time.monotonic() - started
            drawn = int(page.get_by_test_id("audit-table").get_attribute("data-replay-ms") or -1)
            print(f"filtered replay of {REPLAY_RECORDS} records: {drawn} ms, {seen:.2f} s seen")
            expect(rows).to_have_count(1000)
            expect(capped).to_be_visible()
            expect(page.get_by_test_id("audit-matched")).to_have_text(f"{REPLAY_RECORDS:,}")
            assert rows.first.get_attribute("data-seq") == str(newest_failed)
            page.get_by_test_id("audit-types").select_option("")

            # Back to 200: the note goes, being no longer true.
            page.get_by_test_id("audit-window").select_option("200")
            expect(state).to_have_text("live")
            expect(rows).to_have_count(200)
            expect(capped).to_be_hidden()
        finally:
            browser.close()


def _log_in(page: Page, password: str) -> None:
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()


def _take_secret(page: Page) -> str:
    """Reads the one-time secret; the dialog stays until "I have stored it" is ticked."""
    dialog = page.get_by_test_id("dialog-secret")
    expect(dialog).to_be_visible()
    secret = page.get_by_test_id("secret-value").input_value()
    assert len(secret) >= 12
    expect(page.get_by_test_id("secret-close")).to_be_disabled()
    page.get_by_test_id("secret-copy").click()
    expect(page.get_by_test_id("secret-copy-state")).to_have_text(re.compile("Copied|selected"))
    page.keyboard.press("Escape")
    expect(dialog).to_be_visible()
    page.get_by_test_id("secret-stored").check()
    page.get_by_test_id("secret-close").click()
    expect(dialog).to_be_hidden()
    return secret


def _audit_rows(page: Page, event_type: str) -> Locator:
    return page.locator(f'[data-testid="audit-row"][data-type="{event_type}"]')


def test_the_traffic_chart_keeps_one_day_of_minutes() -> None:
    """The ring behind the chart (services/metrics.py): records bucketed by their own
    minute, a day kept, a slot a day old reused rather than added to."""
    ring = MinuteRing()
    base = datetime(2025, 3, 14, 8, 0, 10, tzinfo=UTC)
    m = int(base.timestamp() // 60)
    ring.add(base, accepted=1)
    ring.add(base + timedelta(seconds=30), accepted=2, retrieved=1)
    ring.add(base + timedelta(minutes=2), retrieved=4)
    ring.add(base, accepted=0)  # nothing to count: no bucket
    later = base + timedelta(minutes=10)
    assert ring.window(later) == [MinuteCount(m, 3, 1), MinuteCount(m + 2, 0, 4)]
    day = base + timedelta(minutes=MINUTES)
    assert ring.window(day) == [MinuteCount(m + 2, 0, 4)]  # minute m left the window
    ring.add(day, accepted=5)  # minute m's slot, reused
    assert ring.window(day) == [MinuteCount(m + 2, 0, 4), MinuteCount(m + MINUTES, 5, 0)]
    ring.add(base, accepted=7)  # a day before the newest record: dropped
    ring.add(base + timedelta(minutes=1), accepted=9)  # still in the window: kept
    assert ring.window(day) == [
        MinuteCount(m + 1, 9, 0),
        MinuteCount(m + 2, 0, 4),
        MinuteCount(m + MINUTES, 5, 0),
    ]
