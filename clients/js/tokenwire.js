// tokenwire.js — the browser client for the tokenwire v1 protocol.
// One dependency-free ES module; the same shape as the Python client:
//
//   const client = await connect("ws://127.0.0.1:8765/v1/ws", { token });
//   const gen = client.generate({ model: "demo", messages: [{ role: "user", content: "Hi" }] });
//   for await (const ev of gen) if (ev.type === "token") out.textContent += ev.text;
//   const result = await gen.result();
//
// Frames are parsed defensively: unknown frame types and fields are ignored; a
// malformed frame is reported (the "protocolerror" event), never thrown into the page.
//
// After a dropped connection the client reconnects and resumes the session
// (the server's resume_token): generations in flight go on from the frame
// after the last one they got, so an iteration sees one unbroken stream. A
// page can also take a session up after a reload: keep `client.resumeToken`
// and each generation's `lastSeq`, then `client.resume(token, {id: lastSeq})`.

const SUBPROTOCOL = "tokenwire.v1";
const AUTH_PREFIX = "tokenwire.bearer.";
const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 5000;
const OPEN_TIMEOUT_MS = 10000;
const OPEN = 1; // WebSocket.OPEN, the same in every implementation
const STREAM_EVENTS = new Set(["token", "reasoning", "tool_call_chunk", "tool_call_complete"]);
const GENERATION_FRAMES = new Set([...STREAM_EVENTS, "finish", "error"]);
// Closes after which a session is not resumed: a protocol error, a reader
// closed for being slow (its session ended), the session taken over elsewhere.
const NO_RESUME_CODES = new Set([1002, 4008, 4009]);

let idCounter = 0;

/** The server ended a generation with an `error` frame. */
export class GenerationError extends Error {
  constructor(frame) {
    super(frame.message || frame.code);
    this.name = "GenerationError";
    this.code = frame.code;
    this.retryable = Boolean(frame.retryable);
    this.retryAfterMs = frame.retry_after_ms ?? null;
    this.id = frame.id ?? null;
  }
}

/** The connection dropped while a generation or a reset was pending. */
export class ConnectionLost extends Error {
  /** resumeFailure: the server's resume_failed reason (unknown, expired, gap), or null. */
  constructor(message = "the connection to the server was lost", resumeFailure = null) {
    super(message);
    this.name = "ConnectionLost";
    this.resumeFailure = resumeFailure;
  }
}

function authSubprotocol(token) {
  const bytes = new TextEncoder().encode(token);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return AUTH_PREFIX + btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function newId() {
  idCounter += 1;
  const random = Math.random().toString(36).slice(2, 10);
  return `g-${Date.now().toString(36)}-${idCounter}-${random}`;
}

/** One generation: iterate it for its events, await result() for the whole. */
export class Generation {
  constructor(client, id, model) {
    this.client = client;
    this.id = id;
    this.model = model;
    this.text = "";
    this.reasoning = "";
    this.done = false;
    this._nextSeq = 0;
    this._calls = new Map();
    this._queue = [];
    this._wake = null;
    this._outcome = null;
    this._settled = new Promise((resolve) => (this._settle = resolve));
  }

  /** The seq of the last frame received (-1: none), for a resume. */
  get lastSeq() {
    return this._nextSeq - 1;
  }

  /** The finished result; rejects with GenerationError or ConnectionLost. */
  async result() {
    const outcome = await this._settled;
    if (outcome instanceof Error) throw outcome;
    return outcome;
  }

  /** Cancel it; result() then resolves with reason "cancelled". */
  cancel() {
    if (!this.done) this.client._send({ type: "cancel", id: this.id });
    return this._settled.then(() => undefined);
  }

  async *[Symbol.asyncIterator]() {
    try {
      for (;;) {
        while (this._queue.length === 0) {
          if (this.done) {
            if (this._outcome instanceof Error) throw this._outcome;
            return;
          }
          await new Promise((resolve) => (this._wake = resolve));
        }
        yield this._queue.shift();
      }
    } finally {
      if (!this.done) this.cancel(); // left early: stop it on the server
    }
  }

  _take(frame) {
    if (this.done) return;
    if (frame.seq !== this._nextSeq) {
      return this._end(new Error(`protocol violation: seq ${frame.seq} where ${this._nextSeq} was due`));
    }
    this._nextSeq += 1;
    switch (frame.type) {
      case "token":
        this.text += String(frame.text ?? "");
        break;
      case "reasoning":
        this.reasoning += String(frame.text ?? "");
        break;
      case "tool_call_chunk": {
        const call = this._calls.get(frame.index) ?? { index: frame.index, callId: null, name: null, arguments: "" };
        call.callId = call.callId ?? frame.call_id ?? null;
        call.name = call.name ?? frame.name ?? null;
        call.arguments += String(frame.arguments ?? "");
        this._calls.set(frame.index, call);
        break;
      }
      case "finish":
        return this._end({
          id: this.id,
          model: this.model,
          content: String(frame.content ?? ""),
          reasoning: this.reasoning,
          toolCalls: (frame.tool_calls ?? []).map((c) => ({
            index: c.index, callId: c.call_id ?? null, name: c.name ?? null, arguments: c.arguments ?? "",
          })),
          usage: frame.usage ?? null,
          reason: frame.reason,
        });
      case "error":
        return this._end(new GenerationError(frame));
      default:
        break;
    }
    if (frame.type === "tool_call_chunk" || frame.type === "tool_call_complete") {
      // One spelling in this client: callId, in events as in results; every
      // event of a call carries its id (the wire sends it on the first chunk).
      const { call_id: callId = null, ...rest } = frame;
      this._push({ ...rest, callId: callId ?? this._calls.get(frame.index)?.callId ?? null });
    } else if (STREAM_EVENTS.has(frame.type)) {
      this._push(frame);
    }
  }

  _end(outcome) {
    this.done = true;
    this._outcome = outcome;
    this._settle(outcome);
    this._push(null);
  }

  _push(item) {
    if (item !== null) this._queue.push(item);
    const wake = this._wake;
    this._wake = null;
    if (wake) wake();
  }
}

/** A connection that reconnects with backoff and jitter after a drop. */
export class Client extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.token = options.token ?? null;
    this.reconnect = options.reconnect ?? true;
    // Browsers and Node 22+ have a global WebSocket; Node 20 takes one from
    // the `ws` package: connect(url, { WebSocket }) with `import WebSocket from "ws"`.
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError(
        'tokenwire.js: no WebSocket here: pass one, e.g. connect(url, { WebSocket }) with `import WebSocket from "ws"`',
      );
    }
    this.models = [];
    this.session = null;
    this.limits = null;
    this.state = "connecting";
    this._ws = null;
    this._generations = new Map();
    this._resets = [];
    this._closed = false;
    this._backoff = BACKOFF_FIRST_MS;
    this._opened = null;
    /** The session's resume token (null: the server offers no resume). */
    this.resumeToken = null;
    this.resumes = 0;
    this._resuming = null;
  }

  /**
   * Take up a session after a reload: `positions` maps each generation the
   * page was showing to the last seq it got. Must come before anything else
   * on this connection. Resolves with {resumed, generations}: a Generation
   * per id, whose events go on from there (one the server cannot resume
   * rejects with ConnectionLost).
   */
  resume(token, positions = {}) {
    const generations = new Map();
    for (const [id, lastSeq] of Object.entries(positions)) {
      const generation = new Generation(this, id, "");
      generation._nextSeq = lastSeq + 1;
      this._generations.set(id, generation);
      generations.set(id, generation);
    }
    return new Promise((resolve) => {
      this._resuming = (resumed) => resolve({ resumed, generations });
      this.resumeToken = token;
      this._listed = Object.keys(positions);
      this._send({ type: "resume", token, generations: positions });
    });
  }

  /** Start a generation; returns its Generation at once. */
  generate({ model, messages, tools, toolChoice, params, conversation, id } = {}) {
    const generationId = id ?? newId();
    const generation = new Generation(this, generationId, model);
    if (this._generations.has(generationId)) {
      generation._end(new GenerationError({ code: "duplicate_id", message: `generation ${generationId} is active`, retryable: false, id: generationId }));
      return generation;
    }
    const message = { type: "generate", id: generationId, model, messages };
    if (tools != null) message.tools = tools;
    if (toolChoice != null) message.tool_choice = toolChoice;
    if (params != null) message.params = params;
    if (conversation != null) message.conversation = conversation;
    if (this.state !== "open") {
      generation._end(new ConnectionLost("not connected"));
      return generation;
    }
    generation._request = message; // sent again if the server never read it
    this._generations.set(generationId, generation);
    this._send(message);
    return generation;
  }

  /** Cancel every active generation and forget conversations; resolves with the cancelled ids. */
  reset() {
    if (this.state !== "open") return Promise.reject(new ConnectionLost("not connected"));
    return new Promise((resolve, reject) => {
      this._resets.push({ resolve, reject });
      this._send({ type: "reset" });
    });
  }

  close() {
    this._closed = true;
    this._setState("closed");
    if (this._ws) this._ws.close(1000);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  _send(message) {
    if (this._ws && this._ws.readyState === OPEN) this._ws.send(JSON.stringify(message));
  }

  _open() {
    const protocols = [SUBPROTOCOL];
    if (this.token) protocols.push(authSubprotocol(this.token));
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new this._WebSocket(this.url, protocols);
      } catch (error) {
        reject(error);
        return;
      }
      let ready = false;
      const timer = setTimeout(() => ws.close(), OPEN_TIMEOUT_MS);
      ws.onmessage = (event) => {
        const frame = this._parse(event.data);
        if (frame === null) return;
        if (!ready) {
          if (frame.type !== "ready") return;
          ready = true;
          clearTimeout(timer);
          this._ws = ws;
          this.models = Array.isArray(frame.models) ? frame.models.map(String) : [];
          this.limits = frame.limits ?? null;
          this._backoff = BACKOFF_FIRST_MS;
          this._fresh = { token: frame.resume_token ?? null, session: frame.session ?? null };
          if (this.resumeToken && this.reconnect) {
            // A reconnection: take the session up where it stopped.
            const positions = {};
            for (const [id, generation] of this._generations) positions[id] = generation.lastSeq;
            this._listed = Object.keys(positions);
            this._send({ type: "resume", token: this.resumeToken, generations: positions });
          } else {
            this.resumeToken = this._fresh.token;
            this.session = this._fresh.session;
          }
          this._setState("open");
          resolve(this);
          return;
        }
        this._dispatch(frame);
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        if (!ready) {
          reject(new ConnectionLost("could not connect"));
          return;
        }
        this._lost(event.code);
      };
    });
  }

  _parse(data) {
    if (typeof data !== "string") {
      this._report("binary frame on tokenwire.v1");
      return null;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this._report("a frame that is not JSON");
      return null;
    }
    if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") {
      this._report("a frame without a type");
      return null;
    }
    return frame;
  }

  _report(problem) {
    this.dispatchEvent(new CustomEvent("protocolerror", { detail: problem }));
  }

  _dispatch(frame) {
    if (frame.type === "resumed" || frame.type === "resume_failed") {
      this._resumeAnswer(frame);
      return;
    }
    if (frame.type === "reset_done") {
      const waiter = this._resets.shift();
      if (waiter) waiter.resolve(Array.isArray(frame.cancelled) ? frame.cancelled : []);
      return;
    }
    if (!GENERATION_FRAMES.has(frame.type)) return; // ready again, or a later version's frame
    if (typeof frame.id !== "string") {
      if (frame.type === "error") this.dispatchEvent(new CustomEvent("servererror", { detail: frame }));
      return;
    }
    const generation = this._generations.get(frame.id);
    if (!generation) return;
    generation._take(frame);
    if (generation.done) this._generations.delete(frame.id);
  }

  _resumeAnswer(frame) {
    const ok = frame.type === "resumed";
    if (typeof frame.id === "string") {
      const generation = this._generations.get(frame.id);
      if (!ok && generation && frame.reason === "unknown" && generation._nextSeq === 0) {
        // Nothing of it came and the session never had it: its generate was
        // on its way when the connection dropped. Sent again once resumed.
        (this._unsent ??= []).push(generation._request);
      } else if (!ok && generation) {
        generation._end(new ConnectionLost(`${frame.id} could not be resumed (${frame.reason})`, frame.reason));
        this._generations.delete(frame.id);
      }
      return;
    }
    const unsent = this._unsent ?? [];
    this._unsent = null;
    if (ok) {
      this.resumes += 1;
      for (const message of unsent) this._send(message);
    } else {
      // The session is gone: this connection's new one stands. The generations
      // in flight at the drop are lost; those started since go on there.
      const lost = new ConnectionLost(`the session could not be resumed (${frame.reason})`, frame.reason);
      for (const id of this._listed ?? []) {
        this._generations.get(id)?._end(lost);
        this._generations.delete(id);
      }
      this.resumeToken = this._fresh?.token ?? null;
      this.session = this._fresh?.session ?? null;
    }
    this._listed = null;
    const resuming = this._resuming;
    this._resuming = null;
    if (resuming) resuming(ok);
  }

  _loseAll(lost) {
    for (const generation of this._generations.values()) generation._end(lost);
    this._generations.clear();
  }

  _lost(code) {
    this._ws = null;
    const lost = new ConnectionLost();
    for (const waiter of this._resets.splice(0)) waiter.reject(lost);
    const resumable = this.resumeToken && !NO_RESUME_CODES.has(code);
    if (this._closed || !this.reconnect || !resumable) this._loseAll(lost);
    if (this._closed || !this.reconnect) {
      this._setState("closed");
      return;
    }
    this._setState("reconnecting");
    this._retry();
  }

  _retry() {
    const delay = this._backoff * (0.5 + Math.random());
    this._backoff = Math.min(this._backoff * 2, BACKOFF_MAX_MS);
    setTimeout(() => {
      if (this._closed) return;
      this._open().catch(() => this._retry());
    }, delay);
  }
}

/**
 * Connect to a tokenwire server. Options: `token` (an API key, sent as a
 * subprotocol since browsers cannot set headers), `reconnect` (default true),
 * `WebSocket` (the implementation to use; default the global one: pass the
 * `ws` package's under Node 20).
 */
export async function connect(url, options = {}) {
  const client = new Client(url, options);
  await client._open();
  return client;
}
