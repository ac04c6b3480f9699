// The chat page: one tokenwire connection, one or two models side by side.
// Model output only ever reaches the page through textContent: never as HTML.
//
// The page survives a reload mid-answer: the transcript, the session's
// resume token and each answer's last seq are kept in sessionStorage (this
// tab only), and a reloaded page resumes the session, so the answers go on
// where they stopped and the conversation with them.
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

// -- what a reload keeps ------------------------------------------------------
const STORE = "tokenwire.chat";
const SAVE_EVERY_MS = 200;
let turns = []; // [{prompt, compare, answers: [answer entries]}]
let saveTimer = null;

function loadSaved() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE) ?? "null");
  } catch {
    return null;
  }
}

function saveNow() {
  clearTimeout(saveTimer);
  saveTimer = null;
  if (!client) return;
  const state = { resumeToken: client.resumeToken, chatId, turns };
  try {
    sessionStorage.setItem(STORE, JSON.stringify(state));
  } catch {
    // Storage full or off: the page works on, a reload starts afresh.
  }
}

function save() {
  if (saveTimer === null) saveTimer = setTimeout(saveNow, SAVE_EVERY_MS);
}

addEventListener("pagehide", saveNow);

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

// One assistant answer's element; `entry` is what a reload keeps of it.
function answerBox(entry, container) {
  const box = el("article", "message assistant");
  box.dataset.role = "assistant";
  box.dataset.state = entry.state;
  box.dataset.model = entry.model;
  const head = el("div", "meta", entry.model);
  const reasoning = el("details", "reasoning");
  reasoning.append(el("summary", "", "reasoning"));
  const reasoningText = el("div", "reasoning-text", entry.reasoning);
  reasoning.append(reasoningText);
  reasoning.hidden = !entry.reasoning;
  const content = el("div", "content", entry.text);
  const tools = el("div", "tools");
  const footer = el("div", "footer", entry.footer);
  box.append(head, reasoning, content, tools, footer);
  container.replaceChildren(box);
  return { box, reasoning, reasoningText, content, tools, footer };
}

// One assistant answer: streams into its own element, whatever happens.
function answer(lane, model, prompt, container, entry) {
  Object.assign(entry, { lane, model, prompt, text: "", reasoning: "", state: "streaming", footer: "" });
  const generation = client.generate({
    model,
    messages: [{ role: "user", content: prompt }],
    conversation: `${chatId}-${lane}`,
  });
  entry.id = generation.id;
  entry.lastSeq = -1;
  save();
  return follow(generation, entry, container);
}

async function follow(generation, entry, container) {
  const parts = answerBox(entry, container);
  const { box, reasoning, reasoningText, content, tools, footer } = parts;
  scrollDown();
  active.add(generation);
  refreshButtons();
  const calls = new Map();
  try {
    for await (const event of generation) {
      if (event.type === "token") {
        content.append(document.createTextNode(event.text));
        entry.text += event.text;
      } else if (event.type === "reasoning") {
        reasoning.hidden = false;
        reasoningText.append(document.createTextNode(event.text));
        entry.reasoning += event.text;
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
      entry.lastSeq = event.seq;
      save();
      scrollDown();
    }
    const result = await generation.result();
    box.dataset.state = result.reason === "cancelled" ? "cancelled" : "done";
    const usage = result.usage ? ` · ${result.usage.completion_tokens} tokens` : "";
    footer.textContent = `${result.reason}${usage}`;
    Object.assign(entry, { state: box.dataset.state, footer: footer.textContent, text: result.content });
  } catch (error) {
    box.dataset.state = "error";
    const code = error.code ?? error.name ?? "error";
    const problem = el("div", "error");
    problem.append(el("strong", "error-code", code), document.createTextNode(` ${error.message}`));
    footer.replaceChildren(problem);
    Object.assign(entry, { state: "error", footer: `${code} ${error.message}` });
    if (error.retryable || error.name === "ConnectionLost") {
      const retry = el("button", "retry", "Retry");
      retry.type = "button";
      retry.addEventListener("click", () => answer(entry.lane, entry.model, entry.prompt, container, entry));
      footer.append(retry);
    }
  } finally {
    active.delete(generation);
    refreshButtons();
    scrollDown();
    save();
  }
}

// A turn: the user's prompt, then one answer slot per model.
function turnElement(prompt, compare) {
  log.querySelector(".empty")?.remove();
  const turn = el("section", "turn");
  turn.append(el("article", "message user", prompt));
  const answers = el("div", compare ? "answers compare" : "answers");
  turn.append(answers);
  log.append(turn);
  return answers;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = input.value.trim();
  if (!prompt || !client) return;
  input.value = "";
  const compare = compareBox.checked;
  const answers = turnElement(prompt, compare);
  const lanes = compare ? [["a", modelSelect.value], ["b", modelBSelect.value]] : [["a", modelSelect.value]];
  const turn = { prompt, compare, answers: [] };
  turns.push(turn);
  for (const [lane, model] of lanes) {
    const slot = el("div", "slot");
    answers.append(slot);
    const entry = {};
    turn.answers.push(entry);
    answer(lane, model, prompt, slot, entry);
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
  turns = [];
  saveNow();
  log.replaceChildren(el("p", "empty", "New chat. Ask anything."));
  input.focus();
});

compareBox.addEventListener("change", () => {
  $("compare-picker").hidden = !compareBox.checked;
});

// After a reload: the transcript again, and the session resumed, so the
// answers that were streaming go on where they stopped.
async function restore(saved) {
  if (!saved || !Array.isArray(saved.turns) || saved.turns.length === 0) return;
  turns = saved.turns;
  const streaming = [];
  for (const turn of turns) {
    const answers = turnElement(turn.prompt, turn.compare);
    for (const entry of turn.answers) {
      const slot = el("div", "slot");
      answers.append(slot);
      if (entry.state === "streaming" && typeof entry.id === "string") streaming.push([entry, slot]);
      else answerBox(entry, slot);
    }
  }
  const positions = Object.fromEntries(streaming.map(([entry]) => [entry.id, entry.lastSeq]));
  if (!saved.resumeToken) {
    for (const [entry, slot] of streaming) {
      Object.assign(entry, { state: "error", footer: "ConnectionLost the page was reloaded" });
      answerBox(entry, slot);
    }
    return;
  }
  const { resumed, generations } = await client.resume(saved.resumeToken, positions);
  if (resumed) chatId = saved.chatId ?? chatId; // the conversations came back too
  for (const [entry, slot] of streaming) follow(generations.get(entry.id), entry, slot);
  saveNow();
}

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
  await restore(loadSaved());
  input.focus();
}

start();
