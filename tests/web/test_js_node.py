"""tokenwire.js under Node 20 (no global WebSocket), given the ``ws`` package's."""

from __future__ import annotations

import json

from conftest import say
from node_parts import node


async def test_tokenwire_js_runs_under_node_with_the_ws_package(server):
    tools = {"name": "lookup", "arguments": '{"q": 1}', "fragment_chars": 3}
    messages = say(tokens=2, tool_calls=[tools])
    result = await node("tokenwire_check.mjs", server.url, json.dumps(messages))
    if int(result["node"].split(".")[0]) < 22:  # no global WebSocket: said plainly
        assert result["missing"].startswith("TypeError: tokenwire.js: no WebSocket here")
    else:
        assert result["missing"] is None
    assert result["models"] == ["fake", "demo"]
    assert result["result"]["content"] == "tok0 tok1 "
    (call,) = result["result"]["toolCalls"]
    events = [e for e in result["events"] if e["type"].startswith("tool_call")]
    # One spelling: callId in events, as in results; never the wire's call_id.
    assert all("callId" in e and "call_id" not in e for e in events)
    assert {e["callId"] for e in events} == {call["callId"]} and call["callId"]
