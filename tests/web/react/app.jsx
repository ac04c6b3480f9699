// A chat page as apps build it with the AI SDK: useChat, unchanged, over
// the transport the page's query names (?transport=sse or ws), pointed at
// tokenwire on another origin (?server=http://127.0.0.1:PORT). With
// ?resume=1 the answer survives a drop ("resume": true) and the page
// resumes it on load (useChat's `resume` option).
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport, WebSocketChatTransport } from "ai";
import { useMemo, useState } from "react";
import { createRoot } from "react-dom/client";

const query = new URLSearchParams(location.search);
const server = query.get("server");
const resume = query.get("resume") === "1";
const chatId = query.get("chat") ?? "page-chat";
const body = { model: query.get("model") ?? "fake", ...(resume ? { resume: true } : {}) };

function Chat() {
  const transport = useMemo(
    () =>
      query.get("transport") === "ws"
        ? new WebSocketChatTransport({ url: `${server.replace("http", "ws")}/api/chat/ws`, body })
        : new DefaultChatTransport({ api: `${server}/api/chat`, body }),
    [],
  );
  const { messages, sendMessage, stop, status, error } = useChat({ id: chatId, transport, resume });
  const [input, setInput] = useState("");
  return (
    <main>
      <p role="status">{status}</p>
      {error && <p role="alert">{error.message}</p>}
      <ol>
        {messages.map((m) => (
          <li key={m.id} data-role={m.role} data-id={m.id}>
            {m.parts.filter((p) => p.type === "text").map((p) => p.text).join("")}
          </li>
        ))}
      </ol>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          sendMessage({ text: input });
          setInput("");
        }}
      >
        <input aria-label="Message" value={input} onChange={(e) => setInput(e.target.value)} />
        <button type="submit">Send</button>
        <button type="button" onClick={() => stop()}>Stop</button>
      </form>
    </main>
  );
}

createRoot(document.getElementById("root")).render(<Chat />);
