"""tokenwire.js, the browser client, run in the browser against real servers."""

from __future__ import annotations

import json

import websockets
from conftest import PROMPT_CLOSE_S, TIMEOUT, say

IMPORT = "const tw = await import(base + '/static/tokenwire.js');"


async def run(page, handle, body: str, arg: object = None):
    """Evaluate ``body`` (with ``tw`` the module and ``url`` the server) in a page
    of the server's origin that has no CSP (/healthz)."""
    await page.goto(handle.http + "/healthz")
    script = f"async ([base, url, arg]) => {{ {IMPORT} {body} }}"
    return await page.evaluate(script, [handle.http, handle.url, arg])


async def test_stream_and_result(page, server):
    out = await run(
        page,
        server,
        """
        const client = await tw.connect(url);
        const gen = client.generate({model: "fake", messages: arg});
        const types = [];
        for await (const ev of gen) types.push(ev.type);
        const result = await gen.result();
        client.close();
        return {types, text: gen.text, result, models: client.models};
        """,
        say(tokens=3, reasoning=1),
    )
    assert out["types"] == ["reasoning", "token", "token", "token"]
    assert out["text"] == out["result"]["content"] == "tok0 tok1 tok2 "
    assert out["result"]["reasoning"] == "think0 "
    assert out["result"]["reason"] == "stop" and out["result"]["usage"]["completion_tokens"] == 4
    assert out["models"] == ["fake", "demo"]


async def test_cancel_and_reset(page, server, fake):
    out = await run(
        page,
        server,
        """
        const client = await tw.connect(url);
        const a = client.generate({model: "fake", messages: arg, id: "a"});
        for await (const ev of a) break;             // leaving early cancels
        const first = await a.result();
        const b = client.generate({model: "fake", messages: arg, id: "b"});
        const c = client.generate({model: "fake", messages: arg, id: "c"});
        const ids = await client.reset();
        const reasons = [(await b.result()).reason, (await c.result()).reason];
        client.close();
        return {first: first.reason, ids: ids.sort(), reasons};
        """,
        say(tokens=500, interval=0.02),
    )
    assert out == {"first": "cancelled", "ids": ["b", "c"], "reasons": ["cancelled", "cancelled"]}
    for record in fake.requests[-3:]:
        await record.wait_ended(PROMPT_CLOSE_S)


async def test_errors_carry_code_retryable_and_retry_after(page, server):
    out = await run(
        page,
        server,
        """
        const client = await tw.connect(url);
        const out = [];
        for (const messages of arg) {
          try { await client.generate({model: "fake", messages}).result(); }
          catch (e) { out.push([e.name, e.code, e.retryable, e.retryAfterMs,
                                e instanceof tw.GenerationError]); }
        }
        client.close();
        return out;
        """,
        [say(status=429, retry_after="2"), say(status=401)],
    )
    assert out == [
        ["GenerationError", "upstream_rate_limited", True, 2000, True],
        ["GenerationError", "upstream_rejected", False, None, True],
    ]


async def test_the_browser_key_travels_as_a_subprotocol(page, start_server):
    async with start_server(api_keys=["browser-key"]) as handle:
        out = await run(
            page,
            handle,
            """
            const ok = await tw.connect(url, {token: "browser-key", reconnect: false});
            const models = ok.models; ok.close();
            let refused = null;
            try { await tw.connect(url, {token: "wrong", reconnect: false}); }
            catch (e) { refused = e.name; }
            return {models, refused};
            """,
        )
    assert out == {"models": ["fake", "demo"], "refused": "ConnectionLost"}


async def test_a_drop_ends_pending_generations_with_connection_lost(page, start_server):
    async with start_server() as handle:
        await page.goto(handle.http + "/healthz")
        await page.evaluate(
            f"""async ([base, url, arg]) => {{ {IMPORT}
            window.client = await tw.connect(url, {{reconnect: false}});
            window.gen = window.client.generate({{model: "fake", messages: arg}});
            window.outcome = window.gen.result().then(() => "finished", (e) => e.name);
            }}""",
            [handle.http, handle.url, say(tokens=500, interval=0.02)],
        )
        await page.wait_for_function("window.gen.text.length > 0", timeout=TIMEOUT * 1000)
    assert await page.evaluate("window.outcome") == "ConnectionLost"
    assert await page.evaluate("window.client.state") == "closed"


async def test_a_drop_is_resumed_and_the_stream_is_unbroken(page, start_server):
    async with start_server() as handle:
        await page.goto(handle.http + "/healthz")
        await page.evaluate(
            f"""async ([base, url, arg]) => {{ {IMPORT}
            window.client = await tw.connect(url);
            window.gen = window.client.generate({{model: "fake", messages: arg}});
            window.texts = [];
            window.outcome = (async () => {{
              for await (const ev of window.gen) window.texts.push(ev.text);
              return (await window.gen.result()).content;
            }})();
            }}""",
            [handle.http, handle.url, say(tokens=60, interval=0.01)],
        )
        await page.wait_for_function("window.texts.length >= 10", timeout=TIMEOUT * 1000)
        for link in list(handle.server.connections):
            link._ws.transport.abort()  # the TCP connection just goes
        content = await page.evaluate("window.outcome")
        assert content == "".join(f"tok{i} " for i in range(60))
        assert await page.evaluate("window.texts.join('')") == content
        assert await page.evaluate("window.client.resumes") == 1


async def test_unknown_frames_and_fields_are_ignored_and_malformed_ones_reported(page, server):
    """A hand-written server sends what a later (or broken) server might."""

    async def later_server(ws):
        await ws.send(
            json.dumps(
                {
                    "type": "ready",
                    "session": "s",
                    "protocol": "tokenwire.v1",
                    "models": ["m"],
                    "limits": {},
                    "novelty": 1,
                }
            )
        )
        message = json.loads(await ws.recv())
        gid = message["id"]
        await ws.send(json.dumps({"type": "hologram", "id": gid, "seq": 99}))
        await ws.send("{not json")
        await ws.send(
            json.dumps({"type": "token", "id": gid, "seq": 0, "text": "hi", "color": "red"})
        )
        await ws.send(
            json.dumps(
                {
                    "type": "finish",
                    "id": gid,
                    "seq": 1,
                    "reason": "stop",
                    "content": "hi",
                    "tool_calls": [],
                    "usage": None,
                }
            )
        )
        await ws.wait_closed()

    async with websockets.serve(
        later_server, "127.0.0.1", 0, subprotocols=["tokenwire.v1"]
    ) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        await page.goto(server.http + "/healthz")
        out = await page.evaluate(
            f"""async ([base, url]) => {{ {IMPORT}
            const client = await tw.connect(url, {{reconnect: false}});
            const problems = [];
            client.addEventListener("protocolerror", (e) => problems.push(e.detail));
            const gen = client.generate({{model: "m", messages: [{{role: "user", content: "x"}}]}});
            const result = await gen.result();
            client.close();
            return {{content: result.content, problems}};
            }}""",
            [server.http, f"ws://127.0.0.1:{port}"],
        )
    assert out == {"content": "hi", "problems": ["a frame that is not JSON"]}
