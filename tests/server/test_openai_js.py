"""The official ``openai`` JavaScript package under Node, installed with npm in
its own folder (``tests/node``) as its users install it: a streamed chat
completion, a 429 as its ``RateLimitError``, and one Responses WebSocket call."""

from __future__ import annotations

import json

from node_parts import node


async def test_the_openai_js_package_streams_chat_and_responses(server):
    scenario = json.dumps({"tokens": 3, "reasoning": 1})
    result = await node("openai_check.mjs", f"{server.http}/v1", scenario)
    chat = result["chat"]
    assert chat["text"] == "tok0 tok1 tok2 "
    assert chat["finish"] == "stop" and chat["usage"]["total_tokens"] > 0
    assert result["rateLimited"] == {"name": "RateLimitError", "status": 429}
    responses = result["responses"]
    assert responses["status"] == "completed"
    assert responses["events"][0] == "response.created"
    assert "response.reasoning_text.delta" in responses["events"]
    assert responses["events"][-1] == "response.completed"
    assert responses["output"][-1]["content"][0]["text"] == "tok0 tok1 tok2 "
