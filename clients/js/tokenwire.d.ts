// Type declarations for tokenwire.js, the browser client of the tokenwire v1 protocol.

export interface ChatMessage {
  role: string;
  content?: unknown;
  [key: string]: unknown;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  estimated: boolean;
  /** Where the provider sent them (OpenAI's field names). */
  prompt_tokens_details?: { cached_tokens?: number } | null;
  completion_tokens_details?: { reasoning_tokens?: number } | null;
}

export interface TokenEvent { type: "token"; id: string; seq: number; text: string }
export interface ReasoningEvent { type: "reasoning"; id: string; seq: number; text: string }
/** Tool-call events say `callId`, as results do (the wire's `call_id`). */
export interface ToolCallChunkEvent {
  type: "tool_call_chunk"; id: string; seq: number; index: number;
  callId: string | null; name: string | null; arguments: string;
}
export interface ToolCallCompleteEvent {
  type: "tool_call_complete"; id: string; seq: number; index: number;
  callId: string | null; name: string | null; arguments: string;
}
export type StreamEvent = TokenEvent | ReasoningEvent | ToolCallChunkEvent | ToolCallCompleteEvent;

export interface ToolCall { index: number; callId: string | null; name: string | null; arguments: string }

export interface Result {
  id: string;
  model: string;
  content: string;
  reasoning: string;
  toolCalls: ToolCall[];
  usage: Usage | null;
  reason: "stop" | "length" | "tool_calls" | "content_filter" | "cancelled";
}

export interface GenerateOptions {
  model: string;
  messages: ChatMessage[];
  tools?: unknown[];
  toolChoice?: unknown;
  params?: Record<string, unknown>;
  conversation?: string;
  id?: string;
}

export declare class GenerationError extends Error {
  code: string;
  retryable: boolean;
  retryAfterMs: number | null;
  id: string | null;
}

export declare class ConnectionLost extends Error {
  /** The server's resume_failed reason (unknown, expired, gap), or null. */
  readonly resumeFailure: "unknown" | "expired" | "gap" | null;
}

export declare class Generation implements AsyncIterable<StreamEvent> {
  readonly id: string;
  readonly model: string;
  /** The answer's text received so far. */
  readonly text: string;
  readonly reasoning: string;
  readonly done: boolean;
  /** The seq of the last frame received (-1: none): what a resume starts after. */
  readonly lastSeq: number;
  result(): Promise<Result>;
  cancel(): Promise<void>;
  [Symbol.asyncIterator](): AsyncIterator<StreamEvent>;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export declare class Client extends EventTarget {
  readonly url: string;
  readonly models: string[];
  readonly session: string | null;
  readonly limits: { max_generations: number; max_message_bytes: number } | null;
  readonly state: ConnectionState;
  /** The session's resume token (null: the server offers no resume). */
  readonly resumeToken: string | null;
  /** Connections resumed after a drop. */
  readonly resumes: number;
  /**
   * Take up a session after a page reload (before anything else is sent):
   * `positions` maps generation ids to the last seq the page got.
   */
  resume(
    token: string,
    positions?: Record<string, number>,
  ): Promise<{ resumed: boolean; generations: Map<string, Generation> }>;
  generate(options: GenerateOptions): Generation;
  reset(): Promise<string[]>;
  close(): void;
}

export interface ConnectOptions {
  /** An API key; sent as the subprotocol `tokenwire.bearer.<base64url>`. */
  token?: string | null;
  /** Reconnect with backoff and jitter after a drop, and resume the
   * session where the server offers it (default true). */
  reconnect?: boolean;
  /** The WebSocket implementation (default: the global one). Under Node 20,
   * the `ws` package's: `import WebSocket from "ws"`. */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
}

export declare function connect(url: string, options?: ConnectOptions): Promise<Client>;
