"""A real browser for the tests and benchmarks: Debian's Chromium driven by Playwright (RECIPES §4),
logged in to the hub through its login form, as a scientist is."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]


def browser():
    """Playwright driving Debian's Chromium; fails (never skips) with what to install."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (bash .ci/setup.sh does, as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]' (bash .ci/setup.sh does)")
    return sync_playwright()


@contextlib.contextmanager
def logged_in(hub_url: str, user: str, password: str, viewport: dict):
    """``(context, page)`` of a fresh Chromium profile, logged in as ``user`` with the hub's login form;
    the profile is removed afterwards."""
    profile = tempfile.mkdtemp(prefix="chrome-profile-")
    try:
        with browser() as p:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                       viewport=viewport, args=CHROMIUM_FLAGS)
            try:
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                page.goto(f"{hub_url}/hub/login")
                page.fill("#username_input", user)
                page.fill("#password_input", password)
                page.click("#login_submit")
                page.wait_for_url(re.compile(rf"/user/{user}/"), timeout=120_000)
                yield ctx, page
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
