// The official Anthropic SDK for Node (npm `@anthropic-ai/sdk`, as apps
// install it) against tokenwire's /v1/messages, on a non-Anthropic model:
// a stream with thinking and text, a tool use whose input the SDK's
// accumulator parses whole, usage, count_tokens, and a 429 as the SDK's error.
// Usage: node anthropic_check.mjs BASE_URL  (prints one JSON object)
import Anthropic from "@anthropic-ai/sdk";

const [baseURL] = process.argv.slice(2);
const client = new Anthropic({ baseURL, apiKey: "sk-tokenwire", maxRetries: 0 });
const fake = (scenario) => `fake:${JSON.stringify(scenario)}`;
const out = {};

{
  const stream = client.messages.stream({
    model: "fake",
    max_tokens: 100,
    messages: [{ role: "user", content: fake({ tokens: 3, reasoning: 2 }) }],
  });
  let text = "";
  stream.on("text", (delta) => { text += delta; });
  const message = await stream.finalMessage();
  out.text = {
    streamed: text,
    blocks: message.content.map((b) => b.type),
    stop: message.stop_reason,
    usage: message.usage,
  };
}

{
  const call = { name: "get_weather", arguments: '{"city": "Paris"}', fragment_chars: 3 };
  const message = await client.messages.stream({
    model: "fake",
    max_tokens: 100,
    tools: [{ name: "get_weather", input_schema: { type: "object", properties: { city: { type: "string" } } } }],
    messages: [{ role: "user", content: fake({ tokens: 0, tool_calls: [call] }) }],
  }).finalMessage();
  const use = message.content.find((b) => b.type === "tool_use");
  out.tool = { name: use?.name, input: use?.input, stop: message.stop_reason };
}

out.count = (await client.messages.countTokens({
  model: "fake",
  messages: [{ role: "user", content: "hello there ".repeat(20) }],
})).input_tokens;

try {
  await client.messages.create({
    model: "fake",
    max_tokens: 10,
    messages: [{ role: "user", content: fake({ status: 429, retry_after: "1" }) }],
  });
  out.rateLimited = null;
} catch (error) {
  out.rateLimited = { status: error.status, type: error.error?.error?.type ?? null };
}

console.log(JSON.stringify(out));
