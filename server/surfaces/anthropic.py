"""Anthropic's Messages API: ``POST /v1/messages`` and its ``count_tokens``.

What Claude Code, the Claude Agent SDK and the ``anthropic`` SDKs send
(``ANTHROPIC_BASE_URL`` pointed here), answered by any model of the config.
A request runs as every HTTP surface's does (``HttpLink``: admission,
limits, engines, metrics), read by ``tokenwire.protocol.anthropic_request``
and written by ``anthropic_messages.MessageEvents``. Keys come in
``x-api-key`` or ``Authorization: Bearer``; ``anthropic-version`` and
``anthropic-beta`` are accepted (and ignored). Every error is Anthropic's
body, ``{"type": "error", "error": {"type", "message"}}``; a silent stream
gets ``ping`` events every ``sse_keepalive`` seconds.
"""

from __future__ import annotations

import secrets

import msgspec
from aiohttp import web

from tokenwire.protocol import BadMessage
from tokenwire.protocol.anthropic_messages import MessageEvents, error_body
from tokenwire.protocol.anthropic_request import messages_request
from tokenwire.protocol.codec import decode_json, too_deep_is_bad_message
from tokenwire.protocol.surface import Surface, SurfaceRequest

from .answers import _dumps
from .http_link import SurfaceHost

COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
KEPT_HEADERS = ("Retry-After", "WWW-Authenticate")
"""Headers of an error answer that its Anthropic form keeps."""


class AnthropicMessages:
    """``POST /v1/messages`` and ``POST /v1/messages/count_tokens``."""

    def __init__(self, surfaces: SurfaceHost) -> None:
        self.surfaces = surfaces
        self.server = surfaces.server

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", COUNT_TOKENS_PATH, self.count_tokens)

    async def create(self, request: web.Request) -> web.StreamResponse:
        admitted = await self._admit(request)
        if isinstance(admitted, web.StreamResponse):
            return anthropic_error(admitted)
        key, raw = admitted
        message_id = f"msg_{secrets.token_hex(12)}"
        try:
            with too_deep_is_bad_message():
                asked = messages_request(decode_json(raw), message_id)
        except BadMessage as exc:
            return anthropic_error(self.surfaces.bad_message(exc))
        generate = asked.generate
        params = generate.params
        if (
            params is not None
            and params.reasoning_effort is not None
            and asked.model not in self.server.upstream.reasons
        ):
            # Thinking is asked by habit (Claude Code asks on every turn): a
            # model that takes no reasoning effort answers without it.
            params = msgspec.structs.replace(params, reasoning_effort=None)
            generate = msgspec.structs.replace(generate, params=params)
        events = MessageEvents(message_id, asked.model, stream=asked.stream)
        surface_request = SurfaceRequest(generate, events, asked.stream, keepalive=events.keepalive)
        link = self.surfaces.link(Surface.ANTHROPIC, request, surface_request)
        return anthropic_error(await link.serve(key))

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        """The prompt's tokens as tokenwire estimates them (the model's
        tokenizer where LiteLLM knows it, else its rule of thumb)."""
        admitted = await self._admit(request, need_room=False)
        if isinstance(admitted, web.StreamResponse):
            return anthropic_error(admitted)
        try:
            with too_deep_is_bad_message():
                body = decode_json(admitted[1])
                if isinstance(body, dict):
                    body = {"max_tokens": 1, **body}  # not a field of count_tokens
                asked = messages_request(body, "count")
        except BadMessage as exc:
            return anthropic_error(self.surfaces.bad_message(exc))
        if asked.model not in self.server.model_set:
            message = f"unknown model {asked.model[:100]!r}"
            return web.json_response(error_body(404, message), status=404, dumps=_dumps)
        messages = asked.generate.messages
        if asked.generate.tools:
            messages = [*messages, {"role": "system", "content": _dumps(asked.generate.tools)}]
        tokens = self.server.upstream.estimate_prompt(asked.model, messages)
        return web.json_response({"input_tokens": tokens}, dumps=_dumps)

    async def _admit(
        self, request: web.Request, *, need_room: bool = True
    ) -> tuple[bytes | None, bytes] | web.StreamResponse:
        """Admission with the key in ``x-api-key`` or ``Authorization: Bearer``."""
        authorization = request.headers.getall("Authorization", [])
        authorization += [f"Bearer {key}" for key in request.headers.getall("x-api-key", [])]
        return await self.surfaces.admit(
            request, "POST", need_room=need_room, authorization=authorization
        )


def anthropic_error(response: web.StreamResponse) -> web.StreamResponse:
    """An error answer (OpenAI's body, as every HTTP surface makes it) in
    Anthropic's form; any other answer as it is."""
    if not isinstance(response, web.Response) or response.status < 400 or response.prepared:
        return response
    message = f"HTTP {response.status}"
    if isinstance(response.body, bytes):
        try:
            said = msgspec.json.decode(response.body)
            message = str(said["error"]["message"])
        except (msgspec.DecodeError, KeyError, TypeError):
            pass
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    return web.json_response(
        error_body(response.status, message),
        status=response.status,
        headers=headers,
        dumps=_dumps,
    )
