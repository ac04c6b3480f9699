"""The chat page at GET /, end to end in a real browser against the real server."""

from __future__ import annotations

import json

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


async def test_model_output_is_text_never_html(page, server):
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
