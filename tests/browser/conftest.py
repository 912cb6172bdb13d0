"""Fixtures of the browser tests: headless Chromium (Debian's package) driven by Playwright, against
`lelastic up` subprocesses like tests/e2e.

chromium      session: the browser; the tests fail (never skip) when /usr/bin/chromium is missing
open_stack    module: a stack without API keys (one worker)
keyed_stack   module: (stack, {tenant: key}) of a stack that requires API keys, tenants alice and bob
page_for      function: page_for(base_url, width=1280, height=800) opens a page that records console
              errors, page errors and any request that leaves the stack; the test fails if there are any
shot          function: shot(page, name) saves a screenshot under docs/screenshots/ when
              UPDATE_SCREENSHOTS=1, else in a temp dir
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from service.api import auth
from tests.factories import REPO_ROOT, RunningStack, assert_all_gone

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM} (Debian: apt-get install -y chromium; "
            "`make test` installs it where it can): it is missing",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


def _stack(path: Path, env: dict[str, str] | None = None) -> Iterator[RunningStack]:
    running = RunningStack(path, workers=1, env=env)
    try:
        running.wait_for("/readyz")
        yield running
    finally:
        pids = running.stop()
    assert_all_gone(pids)


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    yield from _stack(tmp_path_factory.mktemp("open-stack"))


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningStack, dict[str, str]]]:
    path = tmp_path_factory.mktemp("keyed-stack")
    keys_file = path / "keys"
    keys = {tenant: auth.create_key(keys_file, tenant) for tenant in ("alice", "bob")}
    for running in _stack(path, env={"LELASTIC_API_KEYS_FILE": str(keys_file)}):
        yield running, keys


class Problems(list[str]):
    """What went wrong in the page: console errors, uncaught exceptions, requests off the stack."""


@pytest.fixture
def page_for(chromium: Any) -> Iterator[Callable[..., Any]]:
    contexts: list[Any] = []
    problems = Problems()

    def open_page(base_url: str, width: int = 1280, height: int = 800) -> Any:
        context = chromium.new_context(viewport={"width": width, "height": height}, base_url=base_url)
        contexts.append(context)
        allowed = urlsplit(base_url).netloc

        def only_the_stack(route: Any) -> None:
            url = urlsplit(route.request.url)
            if url.scheme in ("data", "blob") or url.netloc == allowed:
                route.continue_()
            else:
                problems.append(f"request off the stack: {route.request.url}")
                route.abort()

        context.route("**/*", only_the_stack)
        page = context.new_page()
        page.on("console", lambda message: message.type == "error" and problems.append(f"console: {message.text}"))
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.set_default_timeout(20_000)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def shot(tmp_path: Path) -> Callable[..., Path]:
    folder = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)

    def save(page: Any, name: str, *, full_page: bool = False) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return save
