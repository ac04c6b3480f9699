// What both AI SDK checks share: a Chat made of the SDK's own AbstractChat
// (what useChat wraps) over a plain in-memory ChatState, and small readers.
import { AbstractChat } from "ai";

class State {
  status = "ready";
  error = undefined;
  constructor(messages = []) { this.messages = messages; }
  pushMessage = (m) => { this.messages = [...this.messages, m]; };
  popMessage = () => { this.messages = this.messages.slice(0, -1); };
  replaceMessage = (i, m) => {
    this.messages = [...this.messages.slice(0, i), m, ...this.messages.slice(i + 1)];
  };
  snapshot = (thing) => structuredClone(thing);
}

export class Chat extends AbstractChat {
  constructor(init) { super({ ...init, state: new State(init.messages) }); }
  get status() { return this.state.status; }
  get error() { return this.state.error; }
}

export const fake = (scenario) => `fake:${JSON.stringify(scenario)}`;
export const text = (message) =>
  message.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
