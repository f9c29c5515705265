// The AI SDK's useChat against this project's POST /api/chat, as an app would use it.
// Model output is only ever rendered as React text children, never as HTML.
//
// When the server streams resumably (STREAM_RESUMABLE=1: its answers say
// X-Stream-Id), the chat is kept in sessionStorage, and a reload mid-answer resumes
// it: useChat's `resume` asks GET /api/chat/<chat id>/stream for the answer in flight,
// which the server replays from its start, so the model runs once.
import "./zod-jitless.js";
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport, generateId, getToolName, isToolUIPart } from "ai";
import { StrictMode, useEffect, useRef, useState } from "react";
import { createRoot } from "react-dom/client";
import "./app.css";

const SAVED = "use-chat.saved"; // the sessionStorage key of `saved`
// This tab's chat: its id (useChat's, sent as the body's `id`), its messages, and
// the X-Stream-Id of its answer in flight (for Stop; null when none is). Kept only
// once the server has said X-Stream-Id: with any other server, the page is as if
// it kept nothing.
const stored = sessionStorage.getItem(SAVED);
const saved = stored ? JSON.parse(stored) : { id: generateId(), messages: [], streamId: null };
let resumable = stored !== null;

function save(messages) {
  saved.messages = messages;
  if (!resumable) return;
  try {
    sessionStorage.setItem(SAVED, JSON.stringify(saved));
  } catch { // storage full or turned off: a reload then starts a new chat
    sessionStorage.removeItem(SAVED);
  }
}

// While an answer streams, `save()` runs at once, then at most every quarter second:
// each save writes every message. An answer saved short does no harm: a reload
// replays the answer in flight from its start.
const SAVE_EVERY_MS = 250;
let saveTimer = null, saveDue = false;

function saveOften(messages) {
  saved.messages = messages;
  if (saveTimer) {
    saveDue = true;
    return;
  }
  save(messages);
  saveTimer = setTimeout(() => {
    saveTimer = null;
    if (!saveDue) return;
    saveDue = false;
    saveOften(saved.messages);
  }, SAVE_EVERY_MS);
}

/** fetch, noting the answer's X-Stream-Id: closing a resumable answer's connection
 * does not stop it, so Stop has to name it to the server. */
async function fetchNotingTheStream(url, init) {
  const response = await fetch(url, init);
  const streamId = response.headers.get("X-Stream-Id");
  if (streamId !== null) {
    saved.streamId = streamId;
    resumable = true;
    save(saved.messages); // a reload from now on resumes this answer
  }
  return response;
}

const transport = new DefaultChatTransport({ api: "/api/chat", fetch: fetchNotingTheStream });

const TOOL_STATES = {
  "input-streaming": "receiving input…",
  "input-available": "running…",
  "output-available": "done",
  "output-error": "failed",
};

/** A tool's input or output as text: strings as they are, anything else as JSON. */
function asText(value) {
  if (value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

/** What went wrong, in words: the server's JSON error body says it in error.message. */
function describe(error) {
  try {
    const body = JSON.parse(error.message);
    return body?.error?.message ?? error.message;
  } catch {
    return error.message;
  }
}

function Reasoning({ part }) {
  const streaming = part.state === "streaming";
  return (
    <details className="reasoning" data-testid="reasoning">
      <summary>{streaming ? "Thinking…" : "Thinking"}</summary>
      <p className="reasoning-text">{part.text}</p>
    </details>
  );
}

function Tool({ part }) {
  const name = getToolName(part);
  return (
    <section className="tool" data-testid="tool" data-state={part.state}>
      <h3 className="tool-head">
        Tool <code data-testid="tool-name">{name}</code>{" "}
        <span className="tool-state">{TOOL_STATES[part.state] ?? part.state}</span>
      </h3>
      <dl>
        <dt>Input</dt>
        <dd>
          <pre data-testid="tool-input">{asText(part.input)}</pre>
        </dd>
        {part.state === "output-available" && (
          <>
            <dt>Output</dt>
            <dd>
              <pre data-testid="tool-output">{asText(part.output)}</pre>
            </dd>
          </>
        )}
        {part.state === "output-error" && (
          <>
            <dt>Error</dt>
            <dd>
              <pre data-testid="tool-error">{part.errorText}</pre>
            </dd>
          </>
        )}
      </dl>
    </section>
  );
}

function Part({ part }) {
  if (part.type === "text") {
    return (
      <p className="text" data-testid="text">
        {part.text}
      </p>
    );
  }
  if (part.type === "reasoning") return <Reasoning part={part} />;
  if (isToolUIPart(part)) return <Tool part={part} />;
  return null; // step-start, sources, files, data parts: not shown here
}

/** The finish reason and token usage that /api/chat sends as message metadata. */
function Meta({ metadata }) {
  if (!metadata?.finishReason) return null;
  const usage = metadata.usage;
  const tokens = usage?.total_tokens === undefined ? "" : ` · ${usage.total_tokens} tokens`;
  return (
    <p className="meta" data-testid="meta">
      finish: {metadata.finishReason}
      {tokens}
    </p>
  );
}

function Message({ message, stopped }) {
  const mine = message.role === "user";
  return (
    <li className={`message ${message.role}`} data-testid={`message-${message.role}`}>
      <span className="role">{mine ? "You" : "Assistant"}</span>
      {message.parts.map((part, index) => (
        <Part key={index} part={part} />
      ))}
      {stopped && (
        <p className="ending" data-testid="stopped">
          Stopped.
        </p>
      )}
      <Meta metadata={message.metadata} />
    </li>
  );
}

function statusText(status, stopped) {
  if (status === "submitted") return "Waiting for the model…";
  if (status === "streaming") return "Answering…";
  if (status === "error") return "Failed.";
  return stopped ? "Stopped." : "";
}

function App() {
  const [input, setInput] = useState("");
  const [stoppedId, setStoppedId] = useState(null);
  const { messages, sendMessage, regenerate, stop, status, error } = useChat({
    id: saved.id,
    messages: saved.messages,
    resume: stored !== null, // after a reload: the answer in flight, if one is
    transport,
    onFinish: ({ message, messages, isAbort }) => {
      setStoppedId(isAbort ? message.id : null);
      saved.streamId = null;
      save(messages);
    },
  });
  const end = useRef(null);
  useEffect(() => {
    end.current?.scrollIntoView({ block: "end" });
  }, [messages, error]);
  useEffect(() => saveOften(messages), [messages]);
  const busy = status === "submitted" || status === "streaming";

  /** Stop the answer; a resumable one runs on without a reader (until the server
   * gives it up), so ask the server to stop it too. */
  function halt() {
    if (saved.streamId !== null) {
      const url = `/streams/${encodeURIComponent(saved.streamId)}`;
      fetch(url, { method: "DELETE", keepalive: true }).catch(() => {}); // else given up
    }
    stop();
  }

  function send(event) {
    event.preventDefault();
    const text = input.trim();
    if (!text || busy) return;
    setStoppedId(null);
    sendMessage({ text });
    setInput("");
  }

  function sendOnEnter(event) {
    if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) {
      send(event);
    }
  }

  function again() {
    setStoppedId(null);
    regenerate();
  }

  return (
    <>
      <header>
        <h1>useChat example</h1>
        <p>
          The Vercel AI SDK's <code>useChat</code> with its default transport,
          against <code>POST /api/chat</code>.
        </p>
      </header>
      <main>
        <ol aria-label="Conversation" aria-live="polite" data-testid="messages">
          {messages.map((message) => (
            <Message key={message.id} message={message} stopped={message.id === stoppedId} />
          ))}
        </ol>
        {error && (
          <p className="error" role="alert" data-testid="error">
            Error: {describe(error)}
          </p>
        )}
        <p className="status" role="status" data-testid="status">
          {statusText(status, stoppedId !== null)}
        </p>
        <form onSubmit={send} ref={end}>
          <label htmlFor="message">Message</label>
          <textarea
            id="message"
            rows={3}
            value={input}
            placeholder="Ask something. Enter sends, Shift+Enter starts a new line."
            onChange={(event) => setInput(event.target.value)}
            onKeyDown={sendOnEnter}
          />
          <div className="buttons">
            <button type="submit" disabled={busy || !input.trim()}>
              Send
            </button>
            {busy && (
              <button type="button" onClick={halt}>
                Stop
              </button>
            )}
            <button type="button" onClick={again} disabled={busy || messages.length === 0}>
              Regenerate
            </button>
          </div>
        </form>
      </main>
    </>
  );
}

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
