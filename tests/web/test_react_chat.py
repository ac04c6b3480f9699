"""A React page on the AI SDK's ``useChat``, unchanged, in a real browser
(Debian's chromium, driven by Playwright) against the real server.

The page (``tests/web/react/app.jsx``) is bundled by esbuild from the npm
packages (``@ai-sdk/react``, ``ai``, ``react``; no CDN) and served from
another origin than tokenwire's, which lists it in ``allowed_origins``
(CORS for the SSE transport, the Origin check for the WebSocket one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from conftest import PROMPT_CLOSE_S, TIMEOUT
from node_parts import node
from playwright.async_api import expect

MS = int(TIMEOUT * 1000)
REACT = Path(__file__).parent / "react"
ASSISTANT = '[data-role="assistant"]'
TRANSPORTS = ["sse", "ws"]


def scripted(**scenario: object) -> str:
    return "fake:" + json.dumps(scenario)


@pytest.fixture(scope="module")
async def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("react")
    await node("bundle.mjs", str(out), folder=REACT)
    return out


@contextlib.asynccontextmanager
async def static(folder: Path) -> AsyncIterator[str]:
    """``folder`` served over HTTP on its own port: its origin."""
    app = web.Application()
    app.router.add_static("/", folder)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://localhost:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def app_page(page: Any, bundle: Path, start_server: Any, **server: Any) -> AsyncIterator[Any]:
    """The React page on its own origin, and tokenwire allowing that origin;
    ``open(**query)`` loads the page."""
    async with static(bundle) as origin, start_server(allowed_origins=[origin], **server) as tw:

        async def open_page(**query: str) -> None:
            await page.goto(f"{origin}/index.html?{urlencode({'server': tw.http, **query})}")
            await expect(page.get_by_role("status")).to_have_text("ready", timeout=MS)

        yield open_page


async def send(page: Any, text: str) -> None:
    await page.get_by_label("Message").fill(text)
    await page.get_by_role("button", name="Send").click()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_use_chat_page_on_another_origin_streams(page, bundle, start_server, transport):
    async with app_page(page, bundle, start_server) as open_page:
        await open_page(transport=transport)
        await send(page, scripted(tokens=3))
        answer = page.locator(ASSISTANT).last
        await expect(answer).to_have_text("tok0 tok1 tok2 ", timeout=MS)
        await expect(page.get_by_role("status")).to_have_text("ready", timeout=MS)
        await send(page, scripted(status=429, retry_after="1"))
        await expect(page.get_by_role("alert")).to_contain_text("429", timeout=MS)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stop_on_the_page_closes_the_upstream(page, bundle, start_server, fake, transport):
    async with app_page(page, bundle, start_server) as open_page:
        await open_page(transport=transport)
        mark = fake.mark()
        await send(page, scripted(tokens=1000, interval=0.02))
        answer = page.locator(ASSISTANT).last
        await expect(answer).to_contain_text("tok3", timeout=MS)
        record = await fake.request_after(mark, TIMEOUT)
        clicked = time.monotonic()
        await page.get_by_role("button", name="Stop").click()
        await record.wait_ended(PROMPT_CLOSE_S)
        assert record.disconnected, time.monotonic() - clicked
        await expect(page.get_by_role("status")).to_have_text("ready", timeout=MS)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reload_mid_answer_resumes_it_whole(page, bundle, start_server, fake, transport):
    whole = "".join(f"tok{i} " for i in range(80))
    async with app_page(page, bundle, start_server) as open_page:
        query = {"transport": transport, "resume": "1", "chat": f"reload-{transport}"}
        await open_page(**query)
        mark = fake.mark()
        await send(page, scripted(tokens=80, interval=0.03))
        await expect(page.locator(ASSISTANT).last).to_contain_text("tok5", timeout=MS)
        record = await fake.request_after(mark, TIMEOUT)
        await page.reload()  # the page goes mid-answer; useChat resumes on load
        answer = page.locator(ASSISTANT)
        await expect(answer).to_have_count(1, timeout=MS)
        await expect(answer).to_have_text(whole, timeout=MS)
        await expect(page.get_by_role("status")).to_have_text("ready", timeout=MS)
        assert not record.disconnected  # the one upstream request ran on
        assert fake.requests[-1] is record
        await asyncio.sleep(0.2)
        await page.reload()  # its end was received: nothing more to resume
        await expect(page.locator(ASSISTANT)).to_have_count(0)
