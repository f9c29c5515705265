// The AI SDK's useChat against this project's POST /api/chat, as an app would use it.
// Model output is only ever rendered as React text children, never as HTML.
import "./zod-jitless.js";
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport, getToolName, isToolUIPart } from "ai";
import { StrictMode, useEffect, useRef, useState } from "react";
import { createRoot } from "react-dom/client";
import "./app.css";

const transport = new DefaultChatTransport({ api: "/api/chat" });

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
    transport,
    onFinish: ({ message, isAbort }) => setStoppedId(isAbort ? message.id : null),
  });
  const end = useRef(null);
  useEffect(() => {
    end.current?.scrollIntoView({ block: "end" });
  }, [messages, error]);
  const busy = status === "submitted" || status === "streaming";

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
              <button type="button" onClick={() => stop()}>
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
