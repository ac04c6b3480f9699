"""``tokenwire chat``: an interactive chat in the terminal.

Tokens print as they arrive; reasoning and tool calls print dimmed and
coloured, apart from the answer. Ctrl-C stops the current answer and keeps
the program; Ctrl-C at the prompt (so a second one) quits. The conversation
lives on the server (``conversation``); ``/reset`` forgets it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TextIO

from tokenwire.protocol import Reasoning, Token, ToolCallChunk, ToolCallComplete

from ._common import new_id
from .errors import ConnectFailed, ConnectionLost, GenerationError
from .sync import Client, Generation, connect

HELP = "commands: /model NAME, /models, /reset, /help, /quit — Ctrl-C stops an answer"


class _Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text


def run(url: str, model: str | None, api_key: str | None, out: TextIO = sys.stdout) -> int:
    """Run the chat until /quit, end of input, or Ctrl-C at the prompt."""
    style = _Style(out.isatty() and "NO_COLOR" not in os.environ)
    try:
        client = connect(url, api_key=api_key, reconnect=True)
        client.__enter__()
    except ConnectFailed as exc:  # its message names the URL and what to do
        print(f"tokenwire chat: {exc}", file=sys.stderr)
        return 1
    except (OSError, ConnectionLost) as exc:
        print(f"tokenwire chat: cannot connect to {url}: {exc}", file=sys.stderr)
        return 1
    with client:
        if model is None:
            model = client.models[0] if client.models else "demo"
        elif model not in client.models:
            print(f"tokenwire chat: the server does not offer {model!r}", file=sys.stderr)
            return 1
        print(style("2", f"connected to {url} — models: {', '.join(client.models)}"), file=out)
        print(style("2", HELP), file=out)
        conversation = "chat-" + new_id()
        while True:
            try:
                line = input(f"{model}> ").strip()
            except (EOFError, KeyboardInterrupt):
                print(file=out)
                return 0
            if not line:
                continue
            if line.startswith("/"):
                command, _, argument = line.partition(" ")
                if command in ("/quit", "/exit"):
                    return 0
                model = _command(client, command, argument.strip(), model, style, out)
                continue
            try:
                generation = client.generate(
                    model=model,
                    messages=[{"role": "user", "content": line}],
                    conversation=conversation,
                )
                try:
                    _show(generation, style, out)
                except KeyboardInterrupt:
                    with contextlib.suppress(ConnectionLost):
                        generation.cancel()
                    print(style("2", " [stopped]"), file=out)
            except GenerationError as exc:
                retry = " (retryable)" if exc.retryable else ""
                print(style("31", f"\nerror {exc.code}: {exc.message}{retry}"), file=out)
            except ConnectionLost as exc:
                print(style("31", f"\nconnection lost: {exc}"), file=out)


def _command(
    client: Client, command: str, argument: str, model: str, style: _Style, out: TextIO
) -> str:
    if command == "/reset":
        client.reset()
        print(style("2", "(conversation cleared)"), file=out)
    elif command == "/models":
        print(", ".join(client.models), file=out)
    elif command == "/model":
        if argument in client.models:
            print(style("2", f"(model: {argument})"), file=out)
            return argument
        print(style("31", f"unknown model {argument!r}; /models lists them"), file=out)
    else:
        print(HELP, file=out)
    return model


def _show(generation: Generation, style: _Style, out: TextIO) -> None:
    """Print a generation's events as they come; answer text plain, the rest apart."""
    in_reasoning = False
    for event in generation:
        match event:
            case Reasoning(text=text):
                if not in_reasoning:
                    out.write(style("2", "thinking: "))
                    in_reasoning = True
                out.write(style("2;3", text))
            case Token(text=text):
                if in_reasoning:
                    out.write("\n")
                    in_reasoning = False
                out.write(text)
            case ToolCallChunk(name=name, arguments=arguments):
                if name:
                    out.write(style("36", f"\n→ {name}("))
                out.write(style("36", arguments))
            case ToolCallComplete():
                out.write(style("36", ")"))
        out.flush()
    result = generation.result()
    usage = result.usage
    tokens = f" · {usage.completion_tokens} tokens" if usage else ""
    out.write(style("2", f"\n[{result.reason}{tokens}]") + "\n")
    out.flush()
