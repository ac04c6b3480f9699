// The AI SDK's WebSocketChatTransport (npm `ai`, as apps install it) against
// tokenwire's /api/chat/ws, with the `ws` package as Node 20's WebSocket.
// Usage: node ai_ws_check.mjs WS_URL [KEY]  (prints one JSON object)
import {
  WebSocketChatTransport,
  lastAssistantMessageIsCompleteWithToolCalls,
} from "ai";
import WebSocket from "ws";
import { Chat, fake, text } from "./ai_chat.mjs";

const [url, key] = process.argv.slice(2);
const transport = (model, headers) =>
  new WebSocketChatTransport({ url, webSocket: WebSocket, body: { model }, headers });
const settle = async (chat) => {
  for (let i = 0; i < 200 && chat.status !== "ready" && chat.status !== "error"; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
};
const auth = key ? { authorization: `Bearer ${key}` } : undefined;
const out = {};

{
  const chat = new Chat({ transport: transport("fake", auth) });
  await chat.sendMessage({ text: fake({ tokens: 3, reasoning: 2 }) });
  await settle(chat);
  const answer = chat.messages.at(-1);
  out.text = {
    status: chat.status,
    error: chat.error?.message ?? null,
    parts: answer.parts.map((p) => p.type),
    text: text(answer),
    metadata: answer.metadata ?? null,
  };
}

{
  const calls = [];
  const chat = new Chat({
    transport: transport("demo", auth),
    sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls,
    onToolCall: ({ toolCall }) => {
      calls.push({ name: toolCall.toolName, input: toolCall.input });
      chat.addToolOutput({ tool: toolCall.toolName, toolCallId: toolCall.toolCallId,
                           output: "sunny, 21 °C" });
    },
  });
  await chat.sendMessage({ text: "use a tool" });
  for (let i = 0; i < 200 && (chat.status !== "ready" || !text(chat.messages.at(-1))); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  out.tool = { status: chat.status, calls, messages: chat.messages.length,
               text: text(chat.messages.at(-1)) };
}

{
  const chat = new Chat({ transport: transport("fake", auth), onError: () => {} });
  const sending = chat.sendMessage({ text: fake({ tokens: 500, interval: 0.02 }) });
  for (let i = 0; i < 200 && !text(chat.messages.at(-1) ?? { parts: [] }); i++) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await chat.stop();
  await sending;
  await settle(chat);
  out.stopped = { status: chat.status, text: text(chat.messages.at(-1)) };
}

{
  const chat = new Chat({ transport: transport("fake", auth), onError: () => {} });
  await chat.sendMessage({ text: fake({ status: 429 }) });
  await settle(chat);
  out.rateLimited = { status: chat.status, error: chat.error?.message ?? null };
}

if (key) {
  const chat = new Chat({ transport: transport("fake", { authorization: "Bearer wrong" }),
                          onError: () => {} });
  await chat.sendMessage({ text: fake({ tokens: 2 }) });
  await settle(chat);
  out.wrongKey = { status: chat.status, error: chat.error?.message ?? null };
}

console.log(JSON.stringify(out));
process.exit(0);
