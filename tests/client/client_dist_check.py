"""The client-only distribution (``tokenwire-client``) in a venv of its own,
with an older or newer websockets than tokenwire's server: a streamed
generation and a cancel on the asyncio client, a generation on the sync one.

Usage: python client_dist_check.py WS_URL PROMPT  (prints one JSON object)
"""

import asyncio
import json
import sys

import websockets

from tokenwire.client import Token, connect, sync


async def main(url: str, prompt: str) -> dict[str, object]:
    async with connect(url) as client:
        gen = await client.generate(model="fake", messages=[{"role": "user", "content": prompt}])
        text = "".join([event.text async for event in gen if isinstance(event, Token)])
        slow = 'fake:{"tokens": 5000, "interval": 0.01}'
        long = await client.generate(model="fake", messages=[{"role": "user", "content": slow}])
        async for event in long:
            if isinstance(event, Token):
                await long.cancel()
                break
        cancelled = (await long.result()).reason
    with sync.connect(url) as client:
        result = client.generate(
            model="fake", messages=[{"role": "user", "content": prompt}]
        ).result()
    return {
        "websockets": websockets.version.version,
        "text": text,
        "cancelled": cancelled,
        "sync": result.content,
    }


print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
