// The chat page: one tokenwire connection, one or two models side by side.
// Answers are Markdown: rendered by marked, then sanitized by DOMPurify (both
// vendored: /static/vendor), re-rendered at most once a frame while they
// stream. Model output reaches the page as HTML only through DOMPurify, under
// a CSP that runs no script but this origin's; everything else (prompts,
// reasoning, tool calls, errors) goes in as text.
//
// The page survives a reload mid-answer: the transcript, the session's
// resume token and each answer's last seq are kept in sessionStorage (this
// tab only), and a reloaded page resumes the session, so the answers go on
// where they stopped and the conversation with them.
import { connect } from "/static/tokenwire.js";
import { marked } from "/static/vendor/marked.esm.js";
import DOMPurify from "/static/vendor/purify.es.mjs";

const $ = (id) => document.getElementById(id);
const modelSelect = $("model");
const compareBox = $("compare");
const modelBSelect = $("model-b");
const log = $("log");
const form = $("composer");
const input = $("message");
const stopButton = $("stop");
const sendButton = $("send");
const statusBadge = $("status");
const keyForm = $("key-form");
const keyInput = $("key");

// The API key: from the URL's #key=, or entered on the page (kept for this tab only).
const KEY_STORE = "tokenwire.key";
let token = new URLSearchParams(location.hash.slice(1)).get("key") ?? sessionStorage.getItem(KEY_STORE);
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

// -- Markdown ------------------------------------------------------------------
// HTML a model writes is shown as text, as chat users expect (and nothing it
// writes can run: DOMPurify then removes any script, handler or unsafe URL
// that Markdown itself could produce, such as a javascript: link).
const escapeHtml = (text) =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
marked.use({ gfm: true, breaks: false, renderer: { html: (token) => escapeHtml(token.text ?? "") } });
const SANITIZE = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "img"],
  FORBID_ATTR: ["style"],
};
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank"); // never replaces the chat
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

// `text` (Markdown from a model) as sanitized HTML in `target`, code blocks
// with their language and a Copy button.
function renderMarkdown(target, text) {
  target.innerHTML = DOMPurify.sanitize(marked.parse(text).trim(), SANITIZE);
  for (const pre of target.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const language = /(?:^|\s)language-([\w+#.-]+)/.exec(code?.className ?? "")?.[1] ?? "text";
    const block = el("div", "code-block");
    const head = el("div", "code-head");
    const copy = el("button", "copy", "Copy");
    copy.type = "button";
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText((code ?? pre).textContent);
        copy.textContent = "Copied";
      } catch {
        copy.textContent = "Copy failed";
      }
      setTimeout(() => (copy.textContent = "Copy"), 1500);
    });
    head.append(el("span", "language", language), copy);
    pre.replaceWith(block);
    block.append(head, pre);
  }
}

const pending = new Map(); // content element → its entry, to render at the next frame
function renderSoon(content, entry) {
  if (pending.size === 0) requestAnimationFrame(renderPending);
  pending.set(content, entry);
}
function renderPending() {
  for (const [content, entry] of pending) renderMarkdown(content, entry.text);
  pending.clear();
}

// What the user reads for an error: plain words, a wait when the server gave
// one, never an internal id.
const PLAIN = {
  unknown_model: "This model is not offered by the server.",
  conversation_busy: "Wait for the answer before sending the next message.",
  conversation_limit: "This conversation is too long for the server: start a new chat.",
  too_many_generations: "Too many answers at once: wait for one to finish.",
  upstream_rate_limited: "The model's provider is rate limiting requests.",
  upstream_timeout: "The model did not answer in time.",
  upstream_error: "The model's provider failed.",
  repeated_output: "The model kept repeating itself, so the answer was stopped.",
  shutting_down: "The server is restarting.",
  overloaded: "The server is busy.",
  internal: "Something went wrong in the server.",
  ConnectionLost: "The connection to the server was lost.",
};
function plainError(error) {
  const code = error.code ?? error.name ?? "error";
  let text = PLAIN[code] ?? String(error.message ?? code).replace(/'[0-9a-f-]{8,}[^']*'/gi, "").trim();
  if (code === "upstream_rejected") text = `The model's provider refused the request: ${error.message}`;
  const wait = error.retryAfterMs ? Math.max(1, Math.ceil(error.retryAfterMs / 1000)) : null;
  return { code, text, wait };
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
  // One message at a time: the conversation takes the next one when the answer is done.
  sendButton.disabled = active.size > 0 || !client;
  sendButton.title = active.size > 0 ? "Wait for the answer, or Stop it" : "";
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
  const content = el("div", "content");
  renderMarkdown(content, entry.text ?? "");
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
        entry.text += event.text;
        renderSoon(content, entry);
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
    pending.delete(content);
    renderMarkdown(content, entry.text);
  } catch (error) {
    box.dataset.state = "error";
    pending.delete(content);
    renderMarkdown(content, entry.text);
    const { code, text, wait } = plainError(error);
    const problem = el("div", "error");
    problem.append(el("strong", "error-code", code), document.createTextNode(` ${text}`));
    if (wait) problem.append(el("span", "retry-after", ` Try again in ${wait} s.`));
    footer.replaceChildren(problem);
    Object.assign(entry, { state: "error", footer: `${code} ${text}${wait ? ` Try again in ${wait} s.` : ""}` });
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
  if (!prompt || !client || active.size > 0) return; // Send is disabled meanwhile
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

// The server refused the handshake: a browser sees only a closed socket, so
// ask /v1/models (which checks the same keys) whether a key is what is missing.
async function keyNeeded() {
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch("/v1/models", { headers });
    return response.status === 401;
  } catch {
    return false;
  }
}

function askForKey(wrong) {
  setStatus("key needed");
  keyForm.hidden = false;
  $("key-problem").textContent = wrong ? "That key was not accepted." : "";
  keyInput.value = "";
  keyInput.focus();
  return new Promise((resolve) => {
    keyForm.addEventListener(
      "submit",
      (event) => {
        event.preventDefault();
        keyForm.hidden = true;
        resolve(keyInput.value.trim());
      },
      { once: true },
    );
  });
}

async function start() {
  setStatus("connecting");
  refreshButtons();
  for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
    try {
      client = await connect(url, { token });
      break;
    } catch {
      if (await keyNeeded()) {
        const wrong = Boolean(token);
        token = await askForKey(wrong);
        sessionStorage.setItem(KEY_STORE, token);
        setStatus("connecting");
        delay = 250;
        continue;
      }
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
  refreshButtons();
  await restore(loadSaved());
  input.focus();
}

start();
