"""The configuration file, decoded once into typed, frozen settings.

The file is a LiteLLM proxy config (``model_list``, ``router_settings``,
``litellm_settings``, ``general_settings``, ``environment_variables``) plus a
``server:`` section of tokenwire's own. ``os.environ/NAME`` anywhere in a
value reads that environment variable. Anything wrong raises ``ConfigError``
whose text is one line naming the key; the command line turns it into exit
status 2. Nothing here imports LiteLLM: a bad config fails fast.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta, Struct

from .engines import litellm_keys
from .errors import ServerError

ENV_PREFIX: Final = "os.environ/"
DEMO_MODEL: Final = "demo"
"""The built-in offline model's name (``engines/demo.py``)."""
DEMO_PROVIDER: Final = "tokenwire"
"""The LiteLLM custom provider the demo is registered as (``tokenwire/demo``)."""

PositiveInt = Annotated[int, Meta(gt=0)]
Seconds = Annotated[float, Meta(gt=0)]
FastPath = Literal["auto", "off"]
ResumeMode = Literal["off", "memory", "redis"]
REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
"""What ``redis_url`` may start with (``+cluster``: a Redis Cluster)."""
FAST_PATH_VALUES: Final = ("auto", "off")


class ConfigError(ServerError):
    """A configuration that cannot be used; ``str()`` is one line naming the key."""


class ServerSettings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``server:`` section. Every limit has a safe default."""

    api_keys: list[Annotated[str, Meta(min_length=1)]] | None = None
    """Keys a handshake must present; None: no authentication."""
    allowed_origins: list[str] | None = None
    """Browser origins allowed to connect (exact match); None: any origin."""
    max_sessions: PositiveInt = 10_000
    """Open WebSocket sessions; past it, handshakes get HTTP 503."""
    max_generations: PositiveInt = 16
    """Active generations per session; past it, ``too_many_generations``."""
    max_message_bytes: PositiveInt = 1_048_576
    """Largest client message; a larger one closes the connection with 1009."""
    first_token_timeout: Seconds = 60.0
    """Seconds from ``generate`` to the first chunk carrying output."""
    idle_timeout: Seconds = 60.0
    """Seconds allowed between two chunks carrying output."""
    drain_timeout: Annotated[float, Meta(ge=0)] = 30.0
    """Seconds active generations may run on after SIGTERM/SIGINT."""
    repeated_chunk_limit: PositiveInt = 100
    """Consecutive identical text chunks allowed before ``repeated_output``."""
    compression: bool = False
    """permessage-deflate; off: it costs frame throughput and memory per session."""
    send_timeout: Seconds = 30.0
    """Seconds a write to a client may stay blocked before it is closed with 4008."""
    http_header_timeout: Seconds = 10.0
    """Seconds an HTTP request's headers may take to arrive, from its first
    byte; past it the client gets 408 and the connection closes."""
    http_body_timeout: Seconds = 30.0
    """Seconds an HTTP request's body may take to arrive once its headers
    are in; past it the client gets 408 and the connection closes."""
    ping_interval: Annotated[float, Meta(ge=0)] = 60.0
    """Seconds between the keep-alive pings a WebSocket session gets (0: none).
    A ping keeps proxies from closing an idle socket and finds a peer that
    vanished. websockets' default (20 s, a task per connection) spent 8.7% of
    a core on 18,000 idle sessions (≈90 µs a ping); tokenwire pings every
    connection from one task (``keepalive.py``, ≈50 µs a ping and its pong):
    at 60 s, 100,000 idle sessions cost ≈1,700 pings a second, about 8% of a
    core. A dead peer of a session that is sent frames is found sooner by
    ``send_timeout``."""
    ping_timeout: Seconds = 30.0
    """Seconds a ping's answer may take before the connection is closed (1011)."""
    sse_keepalive: Seconds = 15.0
    """Seconds an SSE answer may stay silent (a model thinking before its
    first token, say) before tokenwire writes an SSE comment
    (``: keep-alive``), so that proxies that close idle responses (nginx's
    ``proxy_read_timeout``, cloud load balancers: often 60 s) keep it. The
    first one sends the response's headers: a failure after it is an
    in-stream error, not an HTTP status."""
    max_queued_frames: PositiveInt = 4096
    """Frames waiting for one session's socket. While the socket is behind, a
    generation's consecutive ``token`` (or ``reasoning``) pieces merge into one
    frame, so text never grows the queue; a reader that lets more than this
    many frames pile up anyway is closed with 4008."""
    max_upstream_event_bytes: PositiveInt = 1_048_576
    """Largest line or event of a provider's stream; past it the generation
    ends with ``upstream_error`` (memory stays bounded on an endless line)."""
    max_conversations: PositiveInt = 64
    """Conversations one session keeps; a ``generate`` naming one more gets
    ``conversation_limit`` (``reset`` forgets them all)."""
    max_history_bytes: PositiveInt = 4 * 1_048_576
    """Bytes of one conversation's history (its messages as JSON); a
    ``generate`` that would take it past gets ``conversation_limit``."""
    max_total_history_bytes: PositiveInt = 1 << 30
    """Bytes of history all sessions of the server keep together; past it a
    ``generate`` that would add history gets ``conversation_limit``."""
    max_loop_lag: Seconds = 0.02
    """Seconds the event loop may run late before new generations are shed with
    ``overloaded`` (retryable): when more work arrives than the process can
    carry, the work already streaming keeps its pace and its prompt cancels."""
    resume: ResumeMode = "memory"
    """Sessions that survive a dropped connection (``resume`` message): ``memory``
    keeps them on this node; ``redis`` keeps them in Redis (``redis_url``), so
    any node behind a load balancer resumes them; ``off``: a drop cancels."""
    redis_url: str | None = None
    """``redis://host:port/db`` for ``resume: redis`` (required there); a
    Redis Cluster is ``redis+cluster://host:port`` (any of its nodes)."""
    resume_ttl: PositiveInt = 300
    """Seconds after a drop during which the session (its conversations and
    the frames of its generations) can be resumed."""
    orphan_timeout: Seconds = 30.0
    """Seconds a dropped session's generations run on, waiting for a resume,
    before they are cancelled and their upstream requests closed."""
    resume_lease: Seconds = 3.0
    """Seconds a node's lease on its running generations lasts (renewed three
    times a lease): a resume on another node ends a generation whose owner
    died with a retryable ``upstream_error`` within the lease + 1 s."""
    resume_generation_bytes: PositiveInt = 8 * 1_048_576
    """Bytes of one generation's frames kept for a resume; past it the oldest
    go, and a resume that needs them gets ``resume_failed`` ``gap``."""
    resume_total_bytes: PositiveInt = 256 * 1_048_576
    """Bytes of frames the node keeps for resumes (``memory``); past it the
    oldest finished generations are evicted first."""
    response_ttl: PositiveInt = 3600
    """Seconds a stored Responses-API response (``store`` true, the default)
    can be continued with ``previous_response_id`` from another connection
    (with ``resume: redis``, from any node)."""
    response_store_bytes: PositiveInt = 256 * 1_048_576
    """Bytes of stored responses this node keeps in memory (``resume`` memory
    or off); past it the oldest are forgotten first."""
    default_model: str | None = None
    """The model of a ``/api/chat`` request that names none (the AI SDK's
    ``body: {model}``); None: the first model offered."""
    ui_resume: bool = False
    """Whether every ``/api/chat`` answer survives its client's drop (as a
    request with ``"resume": true`` does): it runs on for ``orphan_timeout``
    and ``GET /api/chat/{id}/stream`` replays it. Off: a POST whose client
    leaves is cancelled at once (the AI SDK's ``stop()`` is that abort)."""
    max_ui_chats: PositiveInt = 10_000
    """Chats whose history the server keeps for ``/api/chat`` requests that
    send only their last message (the oldest forgotten first); each at most
    ``max_history_bytes``."""
    fast_path: FastPath = "auto"
    """``auto``: models whose provider streams plain OpenAI SSE skip LiteLLM's
    per-chunk code (``tokenwire.server.engines.native``); ``off``: every model goes
    through ``litellm.acompletion``. A deployment's ``model_info.fast_path``
    overrides it."""


class ModelEntry(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One deployment of ``model_list`` (LiteLLM proxy format)."""

    model_name: Annotated[str, Meta(min_length=1)]
    litellm_params: dict[str, Any]
    model_info: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        value = (self.model_info or {}).get("fast_path", "auto")
        if value not in FAST_PATH_VALUES:
            raise ValueError(f"model_info.fast_path must be 'auto' or 'off', got {value!r}")

    @property
    def fast_path(self) -> FastPath:
        return "off" if (self.model_info or {}).get("fast_path") == "off" else "auto"


class Config(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model_list: list[ModelEntry] = []
    router_settings: dict[str, Any] = {}
    litellm_settings: dict[str, Any] = {}
    general_settings: dict[str, Any] = {}
    environment_variables: dict[str, str] = {}
    server: ServerSettings = ServerSettings()

    @property
    def model_names(self) -> list[str]:
        """The names clients may send as ``model``, in file order, once each."""
        return list(dict.fromkeys(entry.model_name for entry in self.model_list))

    def with_models(self, names: Sequence[str]) -> Config:
        """This config plus one deployment per ``--model NAME`` of the command
        line (``demo``: the built-in offline model)."""
        extra = [
            ModelEntry(
                model_name=name,
                litellm_params={
                    "model": f"{DEMO_PROVIDER}/{DEMO_MODEL}" if name == DEMO_MODEL else name
                },
            )
            for name in names
            if name not in self.model_names
        ]
        return msgspec.structs.replace(self, model_list=[*self.model_list, *extra])


def load(path: str | Path | None) -> Config:
    """Read, resolve and validate a config file (None: the defaults)."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        raw = msgspec.yaml.decode(text) if text.strip() else {}
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(str(exc))}") from None
    return parse(raw, source=str(path))


def parse(raw: Any, *, source: str = "config", environ: Mapping[str, str] | None = None) -> Config:
    """Validate an already-decoded config document."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    env = dict(os.environ if environ is None else environ)
    variables = raw.get("environment_variables")
    if isinstance(variables, dict):
        # As the LiteLLM proxy does: the file's variables are set before use.
        for name, value in variables.items():
            if isinstance(name, str) and isinstance(value, str | int | float):
                env[name] = str(value)
                if environ is None:
                    os.environ[name] = str(value)
    try:
        resolved = _resolve_env(raw, env, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        config = msgspec.convert(resolved, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    if config.server.resume == "redis" and not config.server.redis_url:
        raise ConfigError(f"{source}: server.redis_url: required when server.resume is redis")
    if (url := config.server.redis_url) is not None and not url.startswith(REDIS_SCHEMES):
        raise ConfigError(f"{source}: server.redis_url: must start with {', '.join(REDIS_SCHEMES)}")
    for section, known in (
        ("router_settings", litellm_keys.ROUTER_SETTINGS),
        ("litellm_settings", litellm_keys.LITELLM_SETTINGS),
    ):
        for key in getattr(config, section):
            if key not in known:
                raise ConfigError(
                    f"{source}: {section}.{key}: unknown key{_did_you_mean(key, known)}"
                )
    for i, entry in enumerate(config.model_list):
        model = entry.litellm_params.get("model")
        if not isinstance(model, str) or not model:
            raise ConfigError(
                f"{source}: model_list[{i}].litellm_params.model: required, a LiteLLM model name"
            )
    return config


def _resolve_env(value: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX) :]
        if name not in env:
            raise ConfigError(
                f"{path.lstrip('.') or 'config'}: environment variable {name} is not set"
            )
        return env[name]
    if isinstance(value, dict):
        return {k: _resolve_env(v, env, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


_AT_PATH: Final = re.compile(r" - at `\$\.?([^`]*)`$")


def _describe(exc: msgspec.ValidationError) -> str:
    """msgspec's message turned around: the key first, then the problem."""
    text = str(exc)
    match = _AT_PATH.search(text)
    where = match.group(1) if match else ""
    problem = text[: match.start()] if match else text
    unknown = re.fullmatch(r"Object contains unknown field `([^`]*)`", problem)
    if unknown:
        name = unknown.group(1)
        key = f"{where}.{name}" if where else name
        return f"{key}: unknown key{_did_you_mean(name, _fields_at(where))}"
    missing = re.fullmatch(r"Object missing required field `([^`]*)`", problem)
    if missing:
        key = f"{where}.{missing.group(1)}" if where else missing.group(1)
        return f"{key}: required"
    return f"{where or 'config'}: {problem[0].lower()}{problem[1:]}"


def _fields_at(where: str) -> list[str]:
    """The keys the config takes at ``where`` (a path like ``server`` or ``model_list[0]``)."""
    struct: Any = Config
    for part in filter(None, re.split(r"\.|\[\d+\]", where)):
        struct = {"server": ServerSettings, "model_list": ModelEntry}.get(part)
        if struct is None:
            return []
    if where.startswith("model_list") and not where.endswith("]"):
        return []
    return list(struct.__struct_fields__)


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    """``; did you mean X?`` for the nearest known key, or nothing."""
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return f"; did you mean {near[0]}?" if near else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())
