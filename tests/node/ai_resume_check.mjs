// Resume as the AI SDK (npm `ai`) does it, against tokenwire: an answer cut
// mid-way, then a fresh Chat (a reloaded page: the user's message only)
// calls resumeStream(). Over DefaultChatTransport (`"resume": true` in the
// body; GET /api/chat/{id}/stream) and over WebSocketChatTransport (a
// socket closed mid-answer; a `resume` frame on a new one).
// Usage: node ai_resume_check.mjs BASE_URL WS_URL  (prints one JSON object)
import { DefaultChatTransport, WebSocketChatTransport } from "ai";
import WebSocket from "ws";
import { Chat, fake, text } from "./ai_chat.mjs";

const [base, url] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const until = async (ok, what) => {
  for (let i = 0; i < 400; i++) {
    if (ok()) return;
    await sleep(25);
  }
  throw new Error(`timed out waiting for ${what}`);
};
const prompt = fake({ tokens: 60, interval: 0.02 });
const out = {};

const resumed = async (chat) => {
  await chat.resumeStream();
  await until(() => chat.status === "ready" || chat.status === "error", "the resumed answer");
  const answer = chat.messages.at(-1);
  return {
    status: chat.status,
    error: chat.error?.message ?? null,
    messages: chat.messages.length,
    id: answer.id,
    parts: answer.parts.map((p) => p.type),
    text: text(answer),
  };
};

for (const kind of ["sse", "ws"]) {
  const id = `resume-${kind}`;
  const make = () =>
    kind === "sse"
      ? new DefaultChatTransport({ api: `${base}/api/chat`, body: { model: "fake", resume: true } })
      : new WebSocketChatTransport({ url, webSocket: WebSocket, body: { model: "fake" } });
  const first = make();

  const chat = new Chat({ id, transport: first, onError: () => {} });
  const sent = chat.sendMessage({ text: prompt });
  await until(() => chat.messages.length === 2 && text(chat.messages[1]).length > 20, "a few tokens");
  const cutId = chat.messages[1].id;
  const cutText = text(chat.messages[1]);
  if (kind === "sse") chat.stop(); // the fetch aborted: with resume, a drop, not a stop
  else first.close(); // the socket closed under the answer
  await sent.catch(() => {});
  const user = chat.messages[0];
  // The page reloads: a new Chat with what the app kept (the user's message).
  const again = new Chat({ id, transport: make(), messages: [user], onError: () => {} });
  out[kind] = { cutId, cutText, ...(await resumed(again)) };
  // The finish was received: nothing more to resume.
  const later = new Chat({ id, transport: make(), messages: [user], onError: () => {} });
  await later.resumeStream();
  out[kind].after = { status: later.status, messages: later.messages.length };
}

console.log(JSON.stringify(out));
process.exit(0);
