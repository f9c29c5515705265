// The demo page's client: a chat that reads streamed answers three ways, one per
// route of the contract. Copy the reader you need; each is self-contained.
//
// Model output only ever reaches the page as text (`append`, `textContent`), never
// through `innerHTML`: a model can be made to write <img onerror=...>.
"use strict";

/** A failure worth showing to the user as it is (HTTP error, `event: error`). */
class StreamFailed extends Error {}

// ---- Reader 1: fetch + an SSE parser. Works with POST and a JSON body. ----------

/** POST the conversation and hand each text delta to `out.text`. */
async function streamWithFetch(messages, out, signal) {
  const response = await fetch("completions/chat", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ messages }),
    signal, // abort() closes the connection; the server then cancels the upstream
  });
  await failUnlessOk(response);
  for await (const event of sseEvents(response.body)) {
    if (event.type === "error") throw new StreamFailed(JSON.parse(event.data).message);
    if (event.type === "usage") out.usage(JSON.parse(event.data));
    else if (event.data === "[DONE]") return;
    else out.text(event.data);
  }
  throw new StreamFailed("The stream ended without [DONE]: the answer may be cut short.");
}

/** Parse a Server-Sent Events body into `{type, data}` events, as EventSource does. */
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", type = "message", data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // Split off complete lines; a "\r" at the very end may be half of "\r\n".
      const lines = (buffer + value).split(/\r\n|\r(?!$)|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") { // a blank line ends the event
          if (data.length) yield { type, data: data.join("\n") };
          type = "message";
          data = [];
        } else if (!line.startsWith(":")) { // ":" starts a comment (keep-alive)
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") data.push(value);
          else if (field === "event") type = value;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // stopped early: let go of the connection
  }
}

/** Turn an HTTP error's JSON body (`{"error": {"message"}}`) into a StreamFailed. */
async function failUnlessOk(response) {
  if (response.ok) return;
  const body = await response.json().catch(() => null);
  const retry = response.headers.get("Retry-After");
  throw new StreamFailed(
    `${response.status}: ${body?.error?.message ?? response.statusText}` +
      (retry ? ` Retry after ${retry} s.` : ""),
  );
}

// ---- Reader 2: EventSource. GET only, so it sends the last message alone. --------

function streamWithEventSource(messages, out, signal) {
  const prompt = messages[messages.length - 1].content;
  const source = new EventSource("completionChat?" + new URLSearchParams({ prompt }));
  return new Promise((resolve, reject) => {
    // Close on every way out: an EventSource left open reconnects when the body
    // ends, and that would run (and bill) the whole completion again.
    const finish = (settle, value) => {
      source.close();
      signal.removeEventListener("abort", onAbort);
      settle(value);
    };
    const onAbort = () => finish(reject, signal.reason);
    signal.addEventListener("abort", onAbort);
    source.onmessage = (e) => (e.data === "[DONE]" ? finish(resolve) : out.text(e.data));
    source.addEventListener("usage", (e) => out.usage(JSON.parse(e.data)));
    source.addEventListener("error", (e) => {
      // The server's `event: error` has data; a failed connection has none, and
      // EventSource hides its HTTP status and body.
      const message = e.data
        ? JSON.parse(e.data).message
        : "The stream could not be opened or was cut off (EventSource does not expose why).";
      finish(reject, new StreamFailed(message));
    });
  });
}

// ---- Reader 3: raw text. The simplest body; a failure cuts it off mid-way. -------

async function streamText(messages, out, signal) {
  const response = await fetch("api/stream", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ messages }),
    signal,
  });
  await failUnlessOk(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      if (signal.aborted) throw err;
      throw new StreamFailed("The answer was cut off: the upstream failed mid-stream.");
    }
    if (chunk.done) return;
    out.text(chunk.value);
  }
}

const READERS = { fetch: streamWithFetch, eventsource: streamWithEventSource, text: streamText };

// ---- The page: conversation, stats, buttons. -------------------------------------

const $ = (id) => document.getElementById(id);
const history = []; // the conversation so far, sent as `messages`
let stopper = null; // the AbortController of the answer in flight

/** Append one message to the conversation; model text goes in as a text node. */
function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const meta = document.createElement("p");
  meta.className = "meta";
  item.append(label, body, meta);
  $("conversation").append(item);
  return { item, body, meta };
}

/** Time to first token, rate and usage, updated as the answer streams. */
function statsLine(started, firstAt, pieces, unit, usage) {
  if (firstAt === null) return "Waiting for the first token…";
  const seconds = (performance.now() - firstAt) / 1000;
  const count = usage ? usage.completion_tokens : pieces;
  const parts = [`first token after ${Math.round(firstAt - started)} ms`];
  if (pieces > 1) parts.push(`${count} ${unit}`, `${(count / seconds).toFixed(1)} ${unit}/s`);
  if (usage) {
    parts.push(`usage: ${usage.prompt_tokens} prompt + ${usage.completion_tokens} ` +
      `completion = ${usage.total_tokens} tokens`);
  }
  return parts.join(" · ");
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function send(prompt) {
  const mode = document.querySelector("input[name=mode]:checked").value;
  history.push({ role: "user", content: prompt });
  addMessage("user", prompt);
  const answer = addMessage("assistant", "");
  answer.item.setAttribute("aria-busy", "true"); // announce the answer once, whole
  // Raw text arrives in network reads, not tokens: count those instead.
  const unit = mode === "text" ? "chunks" : "tokens";
  const started = performance.now();
  let firstAt = null, pieces = 0, usage = null;
  const showStats = () => {
    answer.meta.textContent = statsLine(started, firstAt, pieces, unit, usage);
  };
  const out = {
    text(delta) {
      firstAt ??= performance.now();
      pieces += 1;
      answer.body.append(delta); // a text node, never parsed as HTML
      showStats();
      answer.item.scrollIntoView({ block: "nearest" });
    },
    usage(reported) {
      usage = reported;
      showStats();
    },
  };

  stopper = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  setStatus("Streaming…");
  let failed = false;
  try {
    await READERS[mode](history.slice(), out, stopper.signal);
    setStatus("Done.");
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("Stopped.");
    } else {
      failed = true;
      const message = "Error: " + (err instanceof StreamFailed ? err.message : String(err));
      answer.item.classList.add("failed");
      answer.meta.textContent = message;
      setStatus(message, true);
    }
  } finally {
    stopper = null;
    if (firstAt === null && !failed) answer.meta.textContent = "";
    answer.item.removeAttribute("aria-busy");
    $("send").disabled = false;
    $("stop").disabled = true;
  }
  if (!answer.item.isConnected) return; // "New chat" cleared it meanwhile
  // What the user saw of an answer, stopped or whole, is what the model sees next;
  // a failed turn is left out, question and all.
  const reply = answer.body.textContent;
  if (reply && !failed) history.push({ role: "assistant", content: reply });
  else history.pop();
}

fetch("healthz")
  .then((response) => response.json())
  .then((health) => {
    $("upstream").dataset.upstream = health.upstream;
    $("upstream").textContent = health.upstream === "demo"
      ? "Upstream: the built-in demo model (offline; set OPENAI_API_KEY for a real one)"
      : "Upstream: a real OpenAI-compatible API";
  })
  .catch(() => { $("upstream").textContent = "Upstream: unknown (/healthz did not answer)"; });

$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const prompt = $("prompt").value;
  if (stopper || !prompt.trim()) return;
  $("prompt").value = "";
  send(prompt);
});

// Enter sends; Shift+Enter (or Enter while an input method composes) is a new line.
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("ask").requestSubmit();
  }
});

$("stop").addEventListener("click", () => stopper?.abort());

$("clear").addEventListener("click", () => {
  stopper?.abort();
  history.length = 0;
  $("conversation").replaceChildren();
  setStatus("");
});
