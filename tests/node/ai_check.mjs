// The AI SDK (the npm package `ai`, as apps install it) against tokenwire's
// /api/chat: its framework-agnostic AbstractChat (what useChat wraps) with
// the DefaultChatTransport, unchanged. Every chunk is checked by the SDK's
// own schema (the transport refuses one that does not validate).
// Usage: node ai_check.mjs BASE_URL  (prints one JSON object)
import {
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithToolCalls,
} from "ai";
import { Chat, fake } from "./ai_chat.mjs";

const [base] = process.argv.slice(2);
const transport = (model) =>
  new DefaultChatTransport({ api: `${base}/api/chat`, body: { model } });
const parts = (message) => message.parts.map((p) => p.type);
const out = {};

// Text and reasoning, with usage in the finish's metadata.
{
  const chat = new Chat({ transport: transport("fake") });
  await chat.sendMessage({ text: fake({ tokens: 3, reasoning: 2 }) });
  const answer = chat.messages.at(-1);
  out.text = {
    status: chat.status,
    error: chat.error?.message ?? null,
    role: answer.role,
    parts: parts(answer),
    text: answer.parts.filter((p) => p.type === "text").map((p) => p.text).join(""),
    reasoning: answer.parts.filter((p) => p.type === "reasoning").map((p) => p.text).join(""),
    metadata: answer.metadata ?? null,
  };
}

// A tool call whose input arrives parsed, its output sent back, and the
// continuation merged into the same assistant message.
{
  const calls = [];
  const chat = new Chat({
    transport: transport("demo"),
    sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls,
    onToolCall: ({ toolCall }) => {
      calls.push({ name: toolCall.toolName, input: toolCall.input });
      chat.addToolOutput({
        tool: toolCall.toolName,
        toolCallId: toolCall.toolCallId,
        output: "sunny, 21 °C",
      });
    },
  });
  await chat.sendMessage({ text: "use a tool" });
  for (let i = 0; i < 200 && (chat.status !== "ready" || chat.messages.length < 2
       || !chat.messages.at(-1).parts.some((p) => p.type === "text")); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const answer = chat.messages.at(-1);
  out.tool = {
    status: chat.status,
    error: chat.error?.message ?? null,
    messages: chat.messages.length,
    calls,
    parts: parts(answer),
    text: answer.parts.filter((p) => p.type === "text").map((p) => p.text).join(""),
  };
}

// A provider's 429 and an in-stream failure, as the SDK surfaces them.
for (const [name, scenario] of [
  ["rateLimited", { status: 429, retry_after: "2" }],
  ["failedMidway", { tokens: 5, error_after: 2 }],
]) {
  const chat = new Chat({ transport: transport("fake"), onError: () => {} });
  await chat.sendMessage({ text: fake(scenario) });
  out[name] = { status: chat.status, error: chat.error?.message ?? null };
}

console.log(JSON.stringify(out));
