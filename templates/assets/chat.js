// The demo page's client: a chat that reads streamed answers three ways, one per
// route of the contract. Copy the reader you need, with the two shared pieces just
// below (`StreamFailed`, `NAMED_EVENTS`): each reader hands what it reads to the
// callbacks of an `out` object (`text`, `reasoning`, `refusal`, `toolCall`,
// `toolResult`, `finish`, `usage`), and the page draws them.
//
// A server with `STREAM_RESUMABLE=1` keeps each answer running when the page goes
// away: its response says `X-Stream-Id: ANSWER` and each event has an `id:` line
// `ANSWER.N`. The SSE readers then also tell `out.stream(answer)` and, after each
// event, `out.seen(id)`; given the last id seen, they resume after it instead of
// asking again, so a reload mid-answer runs (and bills) the model once.
//
// Model and tool output only ever reach the page as text (`append`, `textContent`),
// never through `innerHTML`: a model can be made to write <img onerror=...>, and a
// tool can return whatever a web page or a file said.
"use strict";

/** A failure worth showing to the user as it is (HTTP error, `event: error`). */
class StreamFailed extends Error {}

/** The SSE routes' named events and the `out` callback each one goes to, with its
 * data parsed. An event named otherwise (a newer server's) is skipped. */
const NAMED_EVENTS = new Map([
  ["reasoning", (out, data) => out.reasoning(data)],
  ["refusal", (out, data) => out.refusal(data)],
  ["tool_call", (out, data) => out.toolCall(JSON.parse(data))], // {id, name, arguments}
  ["tool_result", (out, data) => out.toolResult(JSON.parse(data))], // {id, output|error}
  ["finish", (out, data) => out.finish(JSON.parse(data).reason)],
  ["usage", (out, data) => out.usage(JSON.parse(data))],
]);

// ---- Reader 1: fetch + an SSE parser. Works with POST and a JSON body. ----------

/** POST the conversation; text, thinking, tool calls, endings and usage go to `out`.
 * With `lastEventId` (a resumable answer's `ANSWER.N`), get only what came after it. */
async function streamWithFetch(messages, out, signal, lastEventId) {
  const headers = { "Content-Type": "application/json" };
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const response = await fetch("completions/chat", {
    method: "POST",
    headers,
    body: JSON.stringify({ messages }),
    signal, // abort() closes the connection: the server cancels the upstream (unless
    // it streams resumably: then the page's Stop asks it to, DELETE /streams/ANSWER)
  });
  if (lastEventId && response.status === 204) return; // that was the answer's last event
  await failUnlessOk(response);
  const answer = response.headers.get("X-Stream-Id");
  if (answer) out.stream(answer);
  for await (const event of sseEvents(response.body)) {
    if (event.type === "error") throw new StreamFailed(JSON.parse(event.data).message);
    if (event.type !== "message") NAMED_EVENTS.get(event.type)?.(out, event.data);
    else if (event.data !== "[DONE]") out.text(event.data);
    if (event.id) out.seen(event.id);
    if (event.data === "[DONE]") return;
  }
  throw new StreamFailed("The stream ended without [DONE]: the answer may be cut short.");
}

/** Parse a Server-Sent Events body into `{type, data, id}` events, as EventSource
 * does: `id` is the last `id:` line so far, as EventSource's `lastEventId`. */
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", type = "message", data = [], id = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // Split off complete lines; a "\r" at the very end may be half of "\r\n".
      const lines = (buffer + value).split(/\r\n|\r(?!$)|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") { // a blank line ends the event
          if (data.length) yield { type, data: data.join("\n"), id };
          type = "message";
          data = [];
        } else if (!line.startsWith(":")) { // ":" starts a comment (keep-alive)
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") data.push(value);
          else if (field === "event") type = value;
          else if (field === "id" && !value.includes("\0")) id = value;
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

function streamWithEventSource(messages, out, signal, lastEventId) {
  const prompt = messages[messages.length - 1].content;
  const query = new URLSearchParams(lastEventId ? { prompt, lastEventId } : { prompt });
  const source = new EventSource("completionChat?" + query);
  let reconnectResumes = false; // its events have ids: a reconnect runs nothing again
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
    const seen = (e) => {
      if (!e.lastEventId) return;
      reconnectResumes = true;
      out.seen(e.lastEventId);
    };
    source.onmessage = (e) => {
      if (e.data !== "[DONE]") out.text(e.data);
      seen(e);
      if (e.data === "[DONE]") finish(resolve);
    };
    for (const [name, deliver] of NAMED_EVENTS) {
      source.addEventListener(name, (e) => {
        try {
          deliver(out, e.data);
          seen(e);
        } catch (err) { // bad JSON: a listener's exception would only reach the console
          finish(reject, err);
        }
      });
    }
    source.addEventListener("error", (e) => {
      // A dropped resumable stream: EventSource reconnects with Last-Event-ID itself.
      if (!e.data && reconnectResumes && source.readyState === EventSource.CONNECTING) return;
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
// It carries the answer's text (a refusal as text) and nothing else: no thinking,
// no tool calls, no usage, and no word of an answer cut at the token limit.

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
// Every question and its answer: `{mode, prompt, tape, answer, lastEventId, reply,
// ending}`. The tape is what the reader handed to `out`, as `[callback, value]`
// pairs, to draw the answer again after a reload; `ending` is null while it streams.
const turns = [];
let live = null; // the answer in flight: `{turn, stopper}` (an AbortController)
// The server streams resumably (it said X-Stream-Id): the turns are kept for a reload.
let resumable = false;
const SAVED = "streaming-completions.turns"; // their sessionStorage key
// The page is going away: its streams fail now (EventSource's even before
// "pagehide"), and that is no part of the conversation to resume. What came in since
// the last throttled save is kept first: else a reload right after an answer's first
// events (the save of the one before still due) would lose that answer.
let leaving = false;
addEventListener("beforeunload", () => {
  save();
  leaving = true;
});
addEventListener("pageshow", () => { leaving = false; }); // back from the cache

/** A new element; `text` goes in as a text node, never parsed as HTML. */
function element(tag, className, text = "") {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

/** Append one message to the conversation: its role, then (before `meta`) its body. */
function addMessage(role) {
  const item = element("li", role);
  const meta = element("p", "meta");
  item.append(element("div", "role", role === "user" ? "You" : "Assistant"), meta);
  $("conversation").append(item);
  return { item, meta };
}

// How an answer ended, when the user should know: the rest (`stop`, `tool_calls`)
// is an answer that ended as it meant to.
const ENDINGS = new Map([
  ["length", "Cut off: the token limit was reached."],
  ["content_filter", "Stopped by the content filter."],
]);
const WHOLE = new Set(["stop", "tool_calls", "function_call"]);

/** Tool arguments as text: indented when they are JSON, else exactly as sent. Numbers
 * keep their digits (a 64-bit id would lose its last ones as a JavaScript number). */
function showArguments(text) {
  const keepDigits = (key, value, context) =>
    typeof value === "number" && JSON.rawJSON && context ? JSON.rawJSON(context.source) : value;
  try {
    return JSON.stringify(JSON.parse(text, keepDigits), null, 2);
  } catch {
    return text;
  }
}

/** One assistant answer as it streams: its thinking, text, refusals and tool calls
 * in the order they came (a step's thinking comes before its text), then how it
 * ended. Its methods are the readers' `out` callbacks that draw. */
class AnswerView {
  constructor() {
    const { item, meta } = addMessage("assistant");
    this.item = item;
    this.meta = meta;
    this.parts = element("div", "parts");
    this.ending = element("p", "ending");
    this.ending.hidden = true;
    meta.before(this.parts, this.ending);
    this.open = null; // the part that a delta of its kind continues: {kind, node, close}
    this.results = new Map(); // a tool call's id → where its result goes
  }

  text(delta) {
    this.continuePart("text", () => {
      const node = element("div", "text");
      return { block: node, node };
    }).append(delta);
  }

  /** Thinking goes in a closed "Thinking" box whose title says "Thinking…" while
   * it streams. */
  reasoning(delta) {
    this.continuePart("reasoning", () => {
      const block = element("details", "thinking streaming");
      const summary = element("summary", "", "Thinking…");
      const node = element("div", "thinking-text");
      block.append(summary, node);
      const close = () => {
        block.classList.remove("streaming");
        summary.textContent = "Thinking";
      };
      return { block, node, close };
    }).append(delta);
  }

  refusal(delta) {
    this.continuePart("refusal", () => {
      const block = element("div", "refusal");
      const node = element("div", "refusal-text");
      block.append(element("div", "refusal-label", "Refused"), node);
      return { block, node };
    }).append(delta);
  }

  /** A tool call: its name and arguments, and a place for its result. */
  toolCall(call) {
    this.closePart();
    const block = element("div", "tool");
    const head = element("div", "tool-head", "Tool call ");
    head.append(element("code", "tool-name", call.name));
    const list = element("dl", "");
    const label = element("dt", "", "Result");
    const result = element("dd", "tool-result pending", "Running…");
    list.append(
      element("dt", "", "Arguments"),
      element("dd", "tool-arguments", showArguments(call.arguments)),
      label,
      result,
    );
    block.append(head, list);
    this.parts.append(block);
    this.results.set(call.id, { label, result });
    this.scroll();
  }

  /** The server ran a tool: its output, or its error, under its call. */
  toolResult({ id, output, error }) {
    if (!this.results.has(id)) this.toolCall({ id, name: `(unknown call ${id})`, arguments: "" });
    const { label, result } = this.results.get(id);
    this.results.delete(id);
    const failed = error !== undefined;
    label.textContent = failed ? "Error" : "Output";
    result.className = failed ? "tool-error" : "tool-output";
    result.textContent = failed ? error : output;
    this.scroll();
  }

  /** A step ended; mark the answer when it did not end as it meant to. */
  finish(reason) {
    this.closePart();
    if (WHOLE.has(reason)) return;
    this.ending.textContent = ENDINGS.get(reason) ?? `Ended with the reason "${reason}".`;
    this.ending.hidden = false;
  }

  /** The stream is over, whole or not: nothing is still thinking or running. */
  end() {
    this.closePart();
    for (const { result } of this.results.values()) {
      result.classList.remove("pending");
      result.textContent = "No result.";
    }
    this.results.clear();
  }

  /** What the model said, as the next request's assistant message: its text and
   * refusals, not its thinking. */
  get reply() {
    return [...this.parts.querySelectorAll(".text, .refusal-text")]
      .map((node) => node.textContent)
      .join("");
  }

  /** The open part if it is of `kind`, else a new one made by `make`. */
  continuePart(kind, make) {
    if (this.open?.kind !== kind) {
      this.closePart();
      const { block, node, close } = make();
      this.parts.append(block);
      this.open = { kind, node, close };
    }
    this.scroll();
    return this.open.node;
  }

  closePart() {
    this.open?.close?.();
    this.open = null;
  }

  scroll() {
    this.item.scrollIntoView({ block: "nearest" });
  }
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

/** The conversation before `turn`, then its question: the `messages` it sends. What
 * the user saw of an answer, stopped or whole, is what the model sees next; a failed
 * turn is left out, question and all. */
function messagesFor(turn) {
  const messages = [];
  for (const earlier of turns.slice(0, turns.indexOf(turn))) {
    if (!earlier.reply) continue;
    messages.push({ role: "user", content: earlier.prompt });
    messages.push({ role: "assistant", content: earlier.reply });
  }
  messages.push({ role: "user", content: turn.prompt });
  return messages;
}

function showQuestion(prompt) {
  const question = addMessage("user");
  question.meta.before(element("div", "text", prompt));
}

// The `out` callbacks that draw, hence the ones a tape holds.
const DRAWN = new Set(["text", "reasoning", "refusal", "toolCall", "toolResult", "finish"]);

function replay(answer, tape) {
  for (const [callback, value] of tape) if (DRAWN.has(callback)) answer[callback](value);
}

/** Keep the conversation for a reload, once the server is known to be resumable:
 * the turns that ended, and the one streaming once it has an event to resume after. */
function save() {
  if (!resumable || leaving) return;
  const kept = turns.filter((turn) => turn.ending || turn.lastEventId);
  try {
    sessionStorage.setItem(SAVED, JSON.stringify(kept));
  } catch { // storage full or turned off: a reload then starts a new chat
    sessionStorage.removeItem(SAVED);
  }
}

// While an answer streams, `save()` runs at once, then at most every quarter second:
// each save writes the whole conversation. A reload resumes after the last event
// saved; the server sends the ones after it again.
const SAVE_EVERY_MS = 250;
let saveTimer = null, saveDue = false;

function saveOften() {
  if (saveTimer) {
    saveDue = true;
    return;
  }
  save();
  saveTimer = setTimeout(() => {
    saveTimer = null;
    if (!saveDue) return;
    saveDue = false;
    saveOften();
  }, SAVE_EVERY_MS);
}

/** After a reload: the kept turns again, and the answer that was streaming resumed. */
function restore() {
  const kept = JSON.parse(sessionStorage.getItem(SAVED) ?? "[]");
  resumable = kept.length > 0;
  for (const turn of kept) {
    turns.push(turn);
    showQuestion(turn.prompt);
    if (!turn.ending) {
      answerTurn(turn);
      continue;
    }
    const answer = new AnswerView();
    replay(answer, turn.tape);
    answer.end();
    answer.meta.textContent = turn.ending.meta;
    answer.item.classList.toggle("failed", turn.ending.failed);
  }
}

function send(prompt) {
  const mode = document.querySelector("input[name=mode]:checked").value;
  const turn = { mode, prompt, tape: [], answer: null, lastEventId: null, reply: "", ending: null };
  turns.push(turn);
  showQuestion(prompt);
  answerTurn(turn);
}

/** Stream the answer of `turn`, or, if it has an event id, resume it after that one. */
async function answerTurn(turn) {
  const answer = new AnswerView();
  replay(answer, turn.tape); // what came before a reload
  answer.item.setAttribute("aria-busy", "true"); // announce the answer once, whole
  // Raw text arrives in network reads, not tokens: count those instead.
  const unit = turn.mode === "text" ? "chunks" : "tokens";
  const started = performance.now();
  let firstAt = null, pieces = 0, usage = null;
  const showStats = () => {
    answer.meta.textContent = statsLine(started, firstAt, pieces, unit, usage);
  };
  /** Thinking and text are tokens the model wrote: both count for the stats. */
  const counted = (draw) => (delta) => {
    firstAt ??= performance.now();
    pieces += 1;
    draw(delta);
    showStats();
  };
  const draw = {
    text: counted((delta) => answer.text(delta)),
    reasoning: counted((delta) => answer.reasoning(delta)),
    refusal: counted((delta) => answer.refusal(delta)),
    toolCall: (call) => answer.toolCall(call),
    toolResult: (result) => answer.toolResult(result),
    finish: (reason) => answer.finish(reason),
    usage(reported) {
      usage = reported;
      showStats();
    },
  };
  const out = {
    stream(id) {
      turn.answer = id;
      resumable = true;
    },
    seen(id) {
      turn.answer ??= id.replace(/\.\d+$/, ""); // EventSource shows no header
      turn.lastEventId = id;
      resumable = true;
      saveOften();
    },
  };
  for (const [callback, deliver] of Object.entries(draw)) {
    out[callback] = (value) => {
      turn.tape.push([callback, value]);
      deliver(value);
    };
  }

  live = { turn, stopper: new AbortController() };
  $("send").disabled = true;
  $("stop").disabled = false;
  setStatus(turn.lastEventId ? "Resuming…" : "Streaming…");
  let failed = false;
  try {
    const messages = messagesFor(turn);
    await READERS[turn.mode](messages, out, live.stopper.signal, turn.lastEventId);
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
    live = null;
    answer.end();
    if (firstAt === null && !failed) answer.meta.textContent = "";
    answer.item.removeAttribute("aria-busy");
    $("send").disabled = false;
    $("stop").disabled = true;
  }
  turn.reply = failed ? "" : answer.reply;
  turn.ending = { failed, meta: answer.meta.textContent };
  save();
}

/** Stop the answer in flight. A resumable one runs on without a reader (until the
 * server gives it up), so first ask the server to stop it, then close the stream. */
function stopAnswer() {
  if (!live) return;
  const { answer } = live.turn;
  if (answer) {
    fetch("streams/" + encodeURIComponent(answer), { method: "DELETE", keepalive: true })
      .catch(() => {}); // unreachable: the server stops it once nobody reads it
  }
  live.stopper.abort();
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
  if (live || !prompt.trim()) return;
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

$("stop").addEventListener("click", stopAnswer);

$("clear").addEventListener("click", () => {
  stopAnswer();
  turns.length = 0;
  save();
  $("conversation").replaceChildren();
  setStatus("");
});

restore();
