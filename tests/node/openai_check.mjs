// The official `openai` package under Node, unchanged: one streamed chat
// completion and one Responses WebSocket call against tokenwire.
// Usage: node openai_check.mjs <base URL, e.g. http://127.0.0.1:8000/v1> <fake scenario JSON>
import OpenAI from "openai";
import { ResponsesWS } from "openai/resources/responses/ws";

const [baseURL, scenario] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-js", maxRetries: 0, timeout: 10_000 });
const prompt = `fake:${scenario}`;

const stream = await client.chat.completions.create({
  model: "fake",
  messages: [{ role: "user", content: prompt }],
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let finish = null;
let usage = null;
for await (const chunk of stream) {
  if (chunk.choices.length) {
    text += chunk.choices[0].delta.content ?? "";
    finish = chunk.choices[0].finish_reason ?? finish;
  }
  if (chunk.usage) usage = chunk.usage;
}

let rateLimited = null;
try {
  await client.chat.completions.create({
    model: "fake",
    messages: [{ role: "user", content: 'fake:{"status": 429, "retry_after": "2"}' }],
  });
} catch (error) {
  rateLimited = { name: error.constructor.name, status: error.status };
}

const socket = new ResponsesWS(client);
const events = [];
const completed = await new Promise((resolve, reject) => {
  socket.on("event", (event) => events.push(event.type));
  socket.on("response.completed", (event) => resolve(event.response));
  socket.on("error", (error) => reject(error));
  socket.send({ type: "response.create", model: "fake", input: prompt });
});
socket.close();

console.log(
  JSON.stringify({
    chat: { text, finish, usage },
    rateLimited,
    responses: { events, status: completed.status, output_text: completed.output_text ?? null,
      output: completed.output },
  }),
);
