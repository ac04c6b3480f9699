"""``tokenwire chat``: an interactive chat in the terminal.

Input is prompt_toolkit's line editor: arrows, Home/End, word moves, and a
history kept across runs (Up/Down, Ctrl-R; ``$XDG_STATE_HOME/tokenwire/
chat_history``). Enter sends; a pasted block keeps its newlines (bracketed
paste), and Alt-Enter (or Esc then Enter) starts a new line.

Answers stream as they arrive, wrapped at word boundaries to the terminal's
width. An answer that is Markdown (headings, lists, code, tables, emphasis)
is then shown again rendered for the terminal by rich, in place of the raw
text when it still fits on the screen. Reasoning and tool calls print
dimmed and coloured, apart from the answer.

Ctrl-C stops the current answer and keeps the program; Ctrl-C or Ctrl-D at
the prompt quits. The conversation lives on the server (``conversation``);
``/reset`` forgets it. A connection or key problem is one line saying what
to do, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from tokenwire.protocol import Reasoning, Token, ToolCallChunk, ToolCallComplete

from ._common import new_id
from .errors import ConnectFailed, ConnectionLost, GenerationError
from .sync import Client, Generation, connect

COMMANDS = {
    "/model": "/model NAME  switch model",
    "/models": "/models      list the server's models",
    "/reset": "/reset       forget this conversation",
    "/help": "/help        this list",
    "/quit": "/quit        leave (also /exit, Ctrl-D)",
}
HELP = "commands: /model NAME, /models, /reset, /help, /quit — Ctrl-C stops an answer"
MARKDOWN = re.compile(
    r"(^|\n)(#{1,6} |\s*[-*+] |\s*\d+\. |```|> |\|.*\|)"  # headings, lists, code, quotes, tables
    r"|\*\*[^*\n]+\*\*|`[^`\n]+`|\[[^\]\n]+\]\([^)\s]+\)"  # bold, inline code, links
)
"""What makes an answer worth rendering as Markdown."""


class _Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text


def history_path() -> Path:
    """Where the prompt's history is kept across runs."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tokenwire" / "chat_history"


def _reader(interactive: bool) -> Callable[[str], str]:
    """A function that reads one message (raising EOFError or KeyboardInterrupt)."""
    if not interactive:
        return input
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _(event: object) -> None:  # Alt-Enter (or Esc, Enter): a new line, not send
        event.current_buffer.insert_text("\n")  # type: ignore[attr-defined]

    path = history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        history: FileHistory | InMemoryHistory = FileHistory(str(path))
    except OSError:  # a read-only home: history for this run only
        history = InMemoryHistory()
    session: PromptSession[str] = PromptSession(
        history=history, key_bindings=bindings, enable_history_search=False
    )
    return lambda prompt: session.prompt(prompt)


def run(url: str, model: str | None, api_key: str | None, out: TextIO = sys.stdout) -> int:
    """Run the chat until /quit, end of input, or Ctrl-C at the prompt."""
    tty = out.isatty() and sys.stdin.isatty()
    style = _Style(out.isatty() and "NO_COLOR" not in os.environ)
    try:
        client = connect(url, api_key=api_key, reconnect=True)
        client.__enter__()
    except ConnectFailed as exc:  # its message names the URL and what to do
        if exc.status == 401:
            fix = "pass --api-key KEY, or set TOKENWIRE_API_KEY"
            what = "refused this API key" if api_key else "needs an API key"
            print(f"tokenwire chat: {url}: the server {what}: {fix}", file=sys.stderr)
        else:
            print(f"tokenwire chat: {exc}", file=sys.stderr)
        return 1
    except (OSError, ConnectionLost) as exc:
        print(f"tokenwire chat: cannot connect to {url}: {exc}", file=sys.stderr)
        return 1
    read = _reader(tty)
    with client:
        if model is None:
            model = client.models[0] if client.models else "demo"
        elif model not in client.models:
            offered = ", ".join(client.models)
            print(
                f"tokenwire chat: the server does not offer {model!r} (it offers {offered})",
                file=sys.stderr,
            )
            return 1
        print(style("2", f"connected to {url} — models: {', '.join(client.models)}"), file=out)
        print(style("2", HELP), file=out)
        conversation = "chat-" + new_id()
        while True:
            try:
                line = read(f"{model}> ").strip()
            except (EOFError, KeyboardInterrupt):
                print(file=out)
                return 0
            if not line:
                continue
            if line.startswith("/") and "\n" not in line:
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
                    _show(generation, style, out, rich_markdown=tty)
                except KeyboardInterrupt:
                    with contextlib.suppress(ConnectionLost):
                        generation.cancel()
                    print(style("2", " [stopped]"), file=out)
            except GenerationError as exc:
                retry = " (retryable)" if exc.retryable else ""
                wait = (
                    f"; try again in {max(1, -(-exc.retry_after_ms // 1000))} s"
                    if exc.retry_after_ms
                    else ""
                )
                print(style("31", f"\nerror {exc.code}: {exc.message}{retry}{wait}"), file=out)
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
        if not argument:
            print(f"model: {model}; /model NAME switches ({', '.join(client.models)})", file=out)
        elif argument in client.models:
            print(style("2", f"(model: {argument})"), file=out)
            return argument
        print(style("31", f"unknown model {argument!r}; /models lists them"), file=out)
    elif command == "/help":
        print("\n".join(COMMANDS.values()), file=out)
    else:
        print(style("31", f"unknown command {command}; /help lists them"), file=out)
    return model


class _Wrapped:
    """Text written at word boundaries within ``width`` columns, counting the
    lines it took (so it can be drawn over)."""

    def __init__(self, out: TextIO, width: int) -> None:
        self.out = out
        self.width = max(20, width)
        self.column = 0
        self.lines = 0
        self._word = ""

    def write(self, text: str) -> None:
        for piece in re.split(r"(\s+)", text):
            if not piece:
                continue
            if not piece.isspace():
                self._word += piece
                continue
            self._flush_word()
            for char in piece:
                if char == "\n":
                    self._newline()
                elif self.column < self.width:
                    self.out.write(char)
                    self.column += 1

    def end(self) -> None:
        self._flush_word()

    def _flush_word(self) -> None:
        word, self._word = self._word, ""
        if not word:
            return
        if self.column and self.column + len(word) > self.width:
            self._newline()
        while len(word) > self.width:  # longer than a line: cut it
            self.out.write(word[: self.width - self.column])
            word = word[self.width - self.column :]
            self._newline()
        self.out.write(word)
        self.column += len(word)

    def _newline(self) -> None:
        self.out.write("\n")
        self.column = 0
        self.lines += 1


def _show(generation: Generation, style: _Style, out: TextIO, *, rich_markdown: bool) -> None:
    """Print a generation's events as they come; answer text plain, the rest apart."""
    size = shutil.get_terminal_size((100, 40))
    text = _Wrapped(out, size.columns)
    in_reasoning = False
    answer: list[str] = []
    redraw = rich_markdown  # the raw answer can be drawn over by its rendering
    for event in generation:
        match event:
            case Reasoning(text=piece):
                if not in_reasoning:
                    out.write(style("2", "thinking: "))
                    in_reasoning = True
                out.write(style("2;3", piece))
            case Token(text=piece):
                if in_reasoning:
                    out.write("\n")
                    in_reasoning = False
                answer.append(piece)
                text.write(piece)
            case ToolCallChunk(name=name, arguments=arguments):
                text.end()
                redraw = False
                if name:
                    out.write(style("36", f"\n→ {name}("))
                out.write(style("36", arguments))
            case ToolCallComplete():
                out.write(style("36", ")"))
        out.flush()
    text.end()
    result = generation.result()
    content = "".join(answer)
    if redraw and MARKDOWN.search(content) and text.lines < size.lines - 2:
        # Draw the rendered answer over the raw one.
        out.write(f"\r\x1b[{text.lines}A\x1b[J" if text.lines else "\r\x1b[J")
        _render_markdown(content, out, size.columns)
        text.column = 1  # the footer goes on a line of its own
    usage = result.usage
    tokens = f" · {usage.completion_tokens} tokens" if usage else ""
    out.write(("\n" if text.column else "") + style("2", f"[{result.reason}{tokens}]") + "\n")
    out.flush()


def _render_markdown(content: str, out: TextIO, width: int) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(file=out, width=width, force_terminal=True, highlight=False)
    console.print(Markdown(content, code_theme="ansi_dark", hyperlinks=False), end="")
