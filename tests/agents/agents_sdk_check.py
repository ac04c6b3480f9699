"""The OpenAI Agents SDK (``openai-agents``), as it is, in a venv of its own:
an agent with a function tool runs its tool loop to a final answer through
tokenwire's ``POST /v1/responses`` (the SDK's default model).

Usage: python agents_sdk_check.py BASE_URL PROMPT  (prints one JSON object)
"""

import asyncio
import json
import sys

from agents import Agent, Runner, function_tool, set_default_openai_client, set_tracing_disabled
from openai import AsyncOpenAI

calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    calls.append(city)
    return f"sunny in {city}"


async def main(base_url: str, prompt: str) -> None:
    set_tracing_disabled(True)  # no trace upload: the machine has no network
    set_default_openai_client(AsyncOpenAI(base_url=base_url, api_key="sk-tokenwire"))
    agent = Agent(name="weather", instructions="Use the tool.", model="fake", tools=[get_weather])
    result = await Runner.run(agent, prompt)
    print(json.dumps({"final": result.final_output, "calls": calls}))


asyncio.run(main(sys.argv[1], sys.argv[2]))
