// tokenwire.js under Node 20, which has no global WebSocket: first without an
// implementation (a clear error), then with the `ws` package's.
// Usage: node tokenwire_check.mjs <ws URL> <messages JSON>
import WebSocket from "ws";
import { connect } from "../../clients/js/tokenwire.js";

const [url, messages] = process.argv.slice(2);

let missing = null;
if (typeof globalThis.WebSocket !== "function") {
  try {
    await connect(url);
  } catch (error) {
    missing = `${error.name}: ${error.message}`;
  }
}

const client = await connect(url, { WebSocket });
const generation = client.generate({ model: "fake", messages: JSON.parse(messages) });
const events = [];
for await (const event of generation) events.push(event);
const result = await generation.result();
client.close();
console.log(JSON.stringify({ node: process.versions.node, missing, models: client.models, events, result }));
