// The chat page: one tokenwire connection, one or two models side by side.
// Model output only ever reaches the page through textContent: never as HTML.
import { connect } from "/static/tokenwire.js";

const $ = (id) => document.getElementById(id);
const modelSelect = $("model");
const compareBox = $("compare");
const modelBSelect = $("model-b");
const log = $("log");
const form = $("composer");
const input = $("message");
const stopButton = $("stop");
const statusBadge = $("status");

const token = new URLSearchParams(location.hash.slice(1)).get("key");
const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
let client = null;
let chatId = crypto.randomUUID();
const active = new Set();

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(state) {
  statusBadge.dataset.state = state;
  statusBadge.textContent = state === "open" ? "connected" : state;
}

function fillModels(models) {
  for (const select of [modelSelect, modelBSelect]) {
    const previous = select.value;
    select.replaceChildren(...models.map((m) => el("option", "", m)));
    if (models.includes(previous)) select.value = previous;
  }
  if (!compareBox.checked && models.length > 1 && modelBSelect.value === modelSelect.value) {
    modelBSelect.value = models.find((m) => m !== modelSelect.value);
  }
}

function refreshButtons() {
  stopButton.disabled = active.size === 0;
}

function scrollDown() {
  log.scrollTop = log.scrollHeight;
}

// One assistant answer: streams into its own element, whatever happens.
async function answer(lane, model, prompt, container) {
  const box = el("article", "message assistant");
  box.dataset.role = "assistant";
  box.dataset.state = "streaming";
  box.dataset.model = model;
  const head = el("div", "meta", model);
  const reasoning = el("details", "reasoning");
  reasoning.append(el("summary", "", "reasoning"));
  const reasoningText = el("div", "reasoning-text");
  reasoning.append(reasoningText);
  reasoning.hidden = true;
  const content = el("div", "content");
  const tools = el("div", "tools");
  const footer = el("div", "footer");
  box.append(head, reasoning, content, tools, footer);
  container.replaceChildren(box);
  scrollDown();

  const generation = client.generate({
    model,
    messages: [{ role: "user", content: prompt }],
    conversation: `${chatId}-${lane}`,
  });
  active.add(generation);
  refreshButtons();
  const calls = new Map();
  try {
    for await (const event of generation) {
      if (event.type === "token") {
        content.append(document.createTextNode(event.text));
      } else if (event.type === "reasoning") {
        reasoning.hidden = false;
        reasoningText.append(document.createTextNode(event.text));
      } else if (event.type === "tool_call_chunk" || event.type === "tool_call_complete") {
        let call = calls.get(event.index);
        if (!call) {
          const node = el("div", "tool-call");
          node.dataset.state = "streaming";
          const name = el("span", "tool-name");
          const args = el("code", "tool-args");
          node.append(name, args);
          tools.append(node);
          call = { node, name, args };
          calls.set(event.index, call);
        }
        if (event.name) call.name.textContent = event.name;
        if (event.type === "tool_call_chunk") {
          call.args.append(document.createTextNode(event.arguments));
        } else {
          call.args.textContent = event.arguments;
          call.node.dataset.state = "done";
        }
      }
      scrollDown();
    }
    const result = await generation.result();
    box.dataset.state = result.reason === "cancelled" ? "cancelled" : "done";
    const usage = result.usage ? ` · ${result.usage.completion_tokens} tokens` : "";
    footer.textContent = `${result.reason}${usage}`;
  } catch (error) {
    box.dataset.state = "error";
    const code = error.code ?? error.name ?? "error";
    const problem = el("div", "error");
    problem.append(el("strong", "error-code", code), document.createTextNode(` ${error.message}`));
    footer.replaceChildren(problem);
    if (error.retryable || error.name === "ConnectionLost") {
      const retry = el("button", "retry", "Retry");
      retry.type = "button";
      retry.addEventListener("click", () => answer(lane, model, prompt, container));
      footer.append(retry);
    }
  } finally {
    active.delete(generation);
    refreshButtons();
    scrollDown();
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = input.value.trim();
  if (!prompt || !client) return;
  input.value = "";
  log.querySelector(".empty")?.remove();
  const turn = el("section", "turn");
  turn.append(el("article", "message user", prompt));
  const answers = el("div", compareBox.checked ? "answers compare" : "answers");
  turn.append(answers);
  log.append(turn);
  const lanes = compareBox.checked ? [["a", modelSelect.value], ["b", modelBSelect.value]] : [["a", modelSelect.value]];
  for (const [lane, model] of lanes) {
    const slot = el("div", "slot");
    answers.append(slot);
    answer(lane, model, prompt, slot);
  }
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    form.requestSubmit();
  }
});

stopButton.addEventListener("click", () => {
  for (const generation of active) generation.cancel();
});

$("new-chat").addEventListener("click", async () => {
  if (client && client.state === "open") await client.reset().catch(() => {});
  chatId = crypto.randomUUID();
  log.replaceChildren(el("p", "empty", "New chat. Ask anything."));
  input.focus();
});

compareBox.addEventListener("change", () => {
  $("compare-picker").hidden = !compareBox.checked;
});

async function start() {
  setStatus("connecting");
  for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
    try {
      client = await connect(url, { token });
      break;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random())));
    }
  }
  client.addEventListener("state", (event) => {
    setStatus(event.detail);
    if (event.detail === "open") fillModels(client.models);
  });
  client.addEventListener("protocolerror", (event) => console.warn("tokenwire:", event.detail));
  fillModels(client.models);
  setStatus(client.state);
  input.focus();
}

start();
