"""The chat page at GET /, end to end in a real browser against the real server."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import TIMEOUT
from playwright.async_api import expect

MS = int(TIMEOUT * 1000)
ASSISTANT = '[data-role="assistant"]'


def scripted(**scenario: object) -> str:
    return "fake:" + json.dumps(scenario)


async def open_chat(page, handle):
    response = await page.goto(handle.http + "/")
    await expect(page.get_by_role("status")).to_have_text("connected", timeout=MS)
    return response


async def send(page, text: str) -> None:
    await page.get_by_label("Message").fill(text)
    await page.get_by_role("button", name="Send").click()


async def test_a_streamed_answer_on_demo_under_a_strict_csp(page, server):
    response = await open_chat(page, server)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    await page.get_by_label("Model").select_option("demo")
    await send(page, "Hi there")
    answer = page.locator(ASSISTANT).last
    await expect(answer).to_have_attribute("data-state", "streaming", timeout=MS)
    await expect(answer).to_have_attribute("data-state", "done", timeout=MS)
    text = await answer.locator(".content").text_content()
    assert text.startswith('You said: "Hi there" (2 words).')


async def test_stop_cancels_the_answer_and_its_upstream_request(page, server, fake):
    await open_chat(page, server)
    await send(page, scripted(tokens=1000, interval=0.02))
    answer = page.locator(ASSISTANT).last
    await expect(answer.locator(".content")).to_contain_text("tok3", timeout=MS)
    record = fake.requests[-1]
    await page.get_by_role("button", name="Stop").click()
    await expect(answer).to_have_attribute("data-state", "cancelled", timeout=MS)
    await record.wait_ended(TIMEOUT)
    assert record.disconnected
    await expect(page.get_by_role("button", name="Stop")).to_be_disabled()


async def test_new_chat_clears_the_page_and_the_conversation(page, server, fake):
    await open_chat(page, server)
    await send(page, scripted(tokens=2))
    await expect(page.locator(ASSISTANT).last).to_have_attribute("data-state", "done", timeout=MS)
    await send(page, scripted(tokens=1))
    await expect(page.locator(ASSISTANT)).to_have_count(2)
    await expect(page.locator(ASSISTANT).last).to_have_attribute("data-state", "done", timeout=MS)
    assert len(fake.requests[-1].body["messages"]) == 3  # the history went along
    await page.get_by_role("button", name="New chat").click()
    await expect(page.locator(ASSISTANT)).to_have_count(0)
    await send(page, scripted(tokens=1))
    await expect(page.locator(ASSISTANT).last).to_have_attribute("data-state", "done", timeout=MS)
    assert len(fake.requests[-1].body["messages"]) == 1


async def test_a_tool_call_shows_as_it_streams_and_when_complete(page, server):
    await open_chat(page, server)
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}', "fragment_chars": 3}
    await send(page, scripted(tokens=0, tool_calls=[call], interval=0.03))
    tool = page.locator(ASSISTANT).last.locator(".tool-call")
    await expect(tool).to_have_attribute("data-state", "streaming", timeout=MS)
    await expect(tool.locator(".tool-name")).to_have_text("get_weather")
    await expect(tool).to_have_attribute("data-state", "done", timeout=MS)
    await expect(tool.locator(".tool-args")).to_have_text('{"city": "Paris"}')
    await expect(page.locator(ASSISTANT).last).to_have_attribute("data-state", "done")


async def test_an_error_shows_its_code_and_retry_sends_again(page, server, fake):
    await open_chat(page, server)
    await send(page, scripted(status=503))
    answer = page.locator(ASSISTANT).last
    await expect(answer).to_have_attribute("data-state", "error", timeout=MS)
    await expect(answer.locator(".error-code")).to_have_text("upstream_error")
    before = len(fake.requests)
    await answer.get_by_role("button", name="Retry").click()
    await expect(page.locator(ASSISTANT).last).to_have_attribute("data-state", "error", timeout=MS)
    assert len(fake.requests) == before + 1


async def test_a_refusal_is_not_offered_a_retry(page, server):
    await open_chat(page, server)
    await send(page, scripted(status=400))
    answer = page.locator(ASSISTANT).last
    await expect(answer.locator(".error-code")).to_have_text("upstream_rejected", timeout=MS)
    await expect(answer.get_by_role("button", name="Retry")).to_have_count(0)


async def test_compare_mode_streams_two_models_side_by_side(page, server):
    await open_chat(page, server)
    await page.get_by_label("Model").select_option("fake")
    await page.get_by_label("Compare", exact=True).check()
    await page.get_by_label("Compare with").select_option("demo")
    await send(page, scripted(tokens=30, interval=0.02))
    answers = page.locator(ASSISTANT)
    await expect(answers).to_have_count(2)
    # Both stream at once over the one connection.
    await expect(answers.nth(0)).to_have_attribute("data-state", "streaming", timeout=MS)
    await expect(answers.nth(1)).to_have_attribute("data-state", "streaming", timeout=MS)
    for i, model in enumerate(["fake", "demo"]):
        await expect(answers.nth(i)).to_have_attribute("data-model", model)
        await expect(answers.nth(i)).to_have_attribute("data-state", "done", timeout=MS)
    boxes = [await answers.nth(i).bounding_box() for i in range(2)]
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[0]["x"] < boxes[1]["x"]


async def test_html_in_model_output_is_shown_as_text(page, server):
    await open_chat(page, server)
    payload = '<img src=x onerror="window.__pwned = 1"><script>window.__pwned = 2</script>'
    await send(page, scripted(text=[payload[:20], payload[20:]]))
    answer = page.locator(ASSISTANT).last
    await expect(answer).to_have_attribute("data-state", "done", timeout=MS)
    assert await answer.locator(".content").text_content() == payload
    assert await page.locator("main img, main script").count() == 0
    assert await page.evaluate("window.__pwned") is None


async def test_the_page_reconnects_after_the_server_restarts(page, upstream, fake):
    from tokenwire.server.app import TokenwireServer
    from tokenwire.server.config import ServerSettings

    first = TokenwireServer(ServerSettings(), upstream)
    async with first.listen("127.0.0.1", 0) as (host, port):
        await page.goto(f"http://{host}:{port}/")
        status = page.get_by_role("status")
        await expect(status).to_have_text("connected", timeout=MS)
    await expect(status).to_have_text("reconnecting", timeout=MS)
    second = TokenwireServer(ServerSettings(), upstream)
    async with second.listen(host, port):
        await expect(status).to_have_text("connected", timeout=MS)
        await send(page, scripted(tokens=2))
        answer = page.locator(ASSISTANT).last
        await expect(answer).to_have_attribute("data-state", "done", timeout=MS)
        assert await answer.locator(".content").text_content() == "tok0 tok1 "


async def test_the_page_survives_a_reload_mid_answer(page, server):
    await open_chat(page, server)
    await send(page, scripted(tokens=150, interval=0.02))
    answer = page.locator(ASSISTANT).last
    await expect(answer.locator(".content")).to_contain_text("tok20 ", timeout=MS)
    await page.reload()
    await expect(page.get_by_role("status")).to_have_text("connected", timeout=MS)
    # The same answer goes on where it stopped, in the same place, whole.
    answer = page.locator(ASSISTANT).last
    await expect(page.locator(ASSISTANT)).to_have_count(1)
    await expect(answer).to_have_attribute("data-state", "done", timeout=MS)
    expected = "".join(f"tok{i} " for i in range(150))
    assert await answer.locator(".content").text_content() == expected
    assert await page.locator(".message.user").first.text_content() == scripted(
        tokens=150, interval=0.02
    )
    # And the conversation came back with the session: the next turn carries it.
    await send(page, scripted(echo_roles=True))
    last = page.locator(ASSISTANT).last
    await expect(last).to_have_attribute("data-state", "done", timeout=MS)
    assert await last.locator(".content").text_content() == "user assistant user "


# -- what a first-time user meets -------------------------------------------------------

MARKDOWN = [
    "# Title\n\nSome **bold**, *italic* and `code`, a [link](https://example.com/x).\n\n",
    "- one\n- two\n\n1. first\n2. second\n\n",
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n",
    "```python\nprint('hi')\n```\n",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


async def test_answers_render_as_markdown_while_they_stream(page, server):
    await open_chat(page, server)
    await send(page, scripted(text=MARKDOWN, interval=0.3))
    content = page.locator(ASSISTANT).last.locator(".content")
    # Rendered before the answer is done (the heading came first).
    await expect(content.locator("h1")).to_have_text("Title", timeout=MS)
    await expect(page.locator(ASSISTANT).last).to_have_attribute("data-state", "streaming")
    await expect(page.locator(ASSISTANT).last).to_have_attribute("data-state", "done", timeout=MS)
    await expect(content.locator("strong")).to_have_text("bold")
    await expect(content.locator("em")).to_have_text("italic")
    await expect(content.locator("ul > li")).to_have_count(2)
    await expect(content.locator("ol > li")).to_have_count(2)
    await expect(content.locator("table td")).to_have_text(["1", "2"])
    link = content.locator("a")
    await expect(link).to_have_attribute("href", "https://example.com/x")
    await expect(link).to_have_attribute("target", "_blank")
    assert "noopener" in (await link.get_attribute("rel") or "")
    block = content.locator(".code-block")
    await expect(block.locator(".language")).to_have_text("python")
    await expect(block.locator("pre code")).to_have_text("print('hi')")
    family = await block.locator("pre code").evaluate("e => getComputedStyle(e).fontFamily")
    assert "mono" in family.lower()
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await block.get_by_role("button", name="Copy").click()
    await expect(block.get_by_role("button", name="Copied")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == "print('hi')\n"


HOSTILE = [
    '<script>window.__pwned = "script"</script>',
    "<img src=x onerror=\"window.__pwned = 'img'\">",
    "<svg onload=\"window.__pwned = 'svg'\"></svg>",
    "<iframe src=\"javascript:window.top.__pwned = 'iframe'\"></iframe>",
    "[click me](javascript:window.__pwned='link')",
    "<a href=\"javascript:window.__pwned='a'\">raw link</a>",
    "[data](data:text/html,<script>window.__pwned='data'</script>)",
    "![pixel](https://attacker.example/p.png)",
    "<style>body { display: none }</style>",
    '<form action="https://attacker.example"><button>go</button></form>',
    "<details open ontoggle=\"window.__pwned='details'\">x</details>",
    "`<script>` in code is text",
]


async def test_hostile_markdown_and_html_never_run(page, server):
    await open_chat(page, server)
    await send(page, scripted(text=[h + "\n\n" for h in HOSTILE]))
    answer = page.locator(ASSISTANT).last
    await expect(answer).to_have_attribute("data-state", "done", timeout=MS)
    content = answer.locator(".content")
    for link in await content.locator("a").all():
        await link.click(modifiers=["Control"])  # even clicked, nothing runs
    await page.wait_for_timeout(300)
    assert await page.evaluate("window.__pwned") is None
    dangerous = (
        "script, img, svg, iframe, style, form, button:not(.copy), "
        "details[ontoggle], [onerror], [onload]"
    )
    assert await content.locator(dangerous).count() == 0
    hrefs = [await a.get_attribute("href") for a in await content.locator("a").all()]
    assert all(h is None or h.startswith("https://") for h in hrefs), hrefs
    # The raw HTML is shown as the text it is.
    await expect(content).to_contain_text('<script>window.__pwned = "script"</script>')
    await expect(page.locator("body")).to_be_visible()


async def test_send_is_disabled_while_an_answer_streams(page, server, fake):
    await open_chat(page, server)
    send_button = page.get_by_role("button", name="Send")
    await send(page, scripted(tokens=40, interval=0.03))
    answer = page.locator(ASSISTANT).last
    await expect(answer).to_have_attribute("data-state", "streaming", timeout=MS)
    await expect(send_button).to_be_disabled()
    before = len(fake.requests)
    await page.get_by_label("Message").fill("a second question")
    await page.get_by_label("Message").press("Enter")  # Enter does not send either
    await expect(page.locator(ASSISTANT)).to_have_count(1)
    await expect(answer).to_have_attribute("data-state", "done", timeout=MS)
    await expect(send_button).to_be_enabled()
    assert len(fake.requests) == before
    assert await page.get_by_label("Message").input_value() == "a second question"
    await send_button.click()
    await expect(page.locator(ASSISTANT)).to_have_count(2)
    assert "conversation_busy" not in await page.locator("main").text_content()


async def test_errors_say_what_happened_and_when_to_retry_without_ids(page, server):
    await open_chat(page, server)
    await send(page, scripted(status=429, retry_after="7"))
    answer = page.locator(ASSISTANT).last
    await expect(answer).to_have_attribute("data-state", "error", timeout=MS)
    footer = answer.locator(".footer")
    await expect(footer).to_contain_text("rate limiting")
    await expect(footer.locator(".retry-after")).to_have_text(" Try again in 7 s.")
    text = await page.locator("main").text_content()
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}|g-[a-z0-9]{6,}-", text), text


async def test_a_needed_api_key_is_asked_for_and_kept_for_the_tab(page, start_server):
    async with start_server(api_keys=["sk-page"]) as handle:
        await page.goto(handle.http + "/")
        status = page.get_by_role("status")
        await expect(status).to_have_text("key needed", timeout=MS)
        key = page.get_by_label("API key")
        await key.fill("sk-wrong")
        await page.get_by_role("button", name="Connect").click()
        await expect(page.get_by_role("alert")).to_have_text(
            "That key was not accepted.", timeout=MS
        )
        await key.fill("sk-page")
        await page.get_by_role("button", name="Connect").click()
        await expect(status).to_have_text("connected", timeout=MS)
        await expect(key).to_be_hidden()
        await send(page, scripted(tokens=2))
        await expect(page.locator(ASSISTANT).last).to_have_attribute(
            "data-state", "done", timeout=MS
        )
        assert await page.evaluate("sessionStorage.getItem('tokenwire.key')") == "sk-page"
        await page.reload()
        await expect(status).to_have_text("connected", timeout=MS)
        await expect(key).to_be_hidden()


async def test_a_phone_width_layout_and_screenshots(browser, server):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, width, height in (("desktop", 1280, 800), ("phone", 390, 844)):
        context = await browser.new_context(viewport={"width": width, "height": height})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
        await open_chat(page, server)
        picker = page.locator("#compare-picker")
        await expect(picker).to_be_hidden()  # Compare is off
        await page.get_by_label("Compare", exact=True).check()
        await expect(picker).to_be_visible()
        await page.get_by_label("Compare", exact=True).uncheck()
        await expect(picker).to_be_hidden()
        box = await page.get_by_label("Message").bounding_box()
        # A phone's message box takes the width (the buttons go below it).
        assert box is not None and box["width"] >= width * (0.9 if width < 600 else 0.6), box
        for button in ("Send", "Stop", "New chat"):
            target = await page.get_by_role("button", name=button).bounding_box()
            assert target is not None and target["x"] + target["width"] <= width
        await send(page, scripted(text=MARKDOWN))
        await expect(page.locator(ASSISTANT).last).to_have_attribute(
            "data-state", "done", timeout=MS
        )
        overflow = await page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= width, (name, overflow)
        await page.screenshot(path=str(SCREENSHOTS / f"page-{name}.png"))
        await context.close()
        assert not errors, errors
    assert (SCREENSHOTS / "page-phone.png").stat().st_size > 10_000
