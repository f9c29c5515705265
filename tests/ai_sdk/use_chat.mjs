// Drives the Vercel AI SDK's chat client against a live `POST /api/chat`, the way
// `useChat` does: the `ai` package's AbstractChat with an in-memory state (what
// @ai-sdk/react's Chat keeps in React) and its DefaultChatTransport.
//
//   node use_chat.mjs ALIAS BASE_URL < scenarios.json
//
// ALIAS is one of package.json's aliases of `ai` (ai-5-0, ai-5, ai-latest). The
// scenarios are a JSON list of {"name", "actions": [{"send": TEXT, "files"?: [...]}
// | {"regenerate": true}]}, run one after another, each in a new chat. The output is
// one JSON object: for each scenario's name, the chat's `messages`, `status` and
// `error` when its actions are done, its status after each action, and every HTTP
// response it got (status, headers and body, as the client read them).

const ACTION_TIMEOUT_MS = 10_000;
const [alias, baseUrl] = process.argv.slice(2);
if (!alias || !baseUrl) {
  console.error("usage: node use_chat.mjs ALIAS BASE_URL < scenarios.json");
  process.exit(2);
}
const { AbstractChat, DefaultChatTransport } = await import(alias);

/** The state @ai-sdk/react's Chat keeps: a new array on every change, snapshots
 * by structuredClone. */
class MemoryChatState {
  status = "ready";
  error = undefined;
  messages = [];

  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
  };

  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };

  replaceMessage = (index, message) => {
    this.messages = [
      ...this.messages.slice(0, index),
      this.snapshot(message),
      ...this.messages.slice(index + 1),
    ];
  };

  snapshot = (thing) => structuredClone(thing);
}

class Chat extends AbstractChat {
  constructor(init) {
    super({ ...init, state: new MemoryChatState() });
  }
}

/** globalThis.fetch, keeping a copy of each response for the report. */
function recordingFetch(responses, reads) {
  return async (input, init) => {
    const response = await globalThis.fetch(input, init);
    const record = {
      status: response.status,
      headers: Object.fromEntries(response.headers),
      body: "",
    };
    responses.push(record);
    if (!response.body) return response;
    const [forClient, forReport] = response.body.tee();
    reads.push(
      new Response(forReport).text().then(
        (text) => (record.body = text),
        (error) => (record.bodyError = String(error)),
      ),
    );
    const { status, statusText, headers } = response;
    return new Response(forClient, { status, statusText, headers });
  };
}

function errorReport(error) {
  if (error === undefined) return null;
  const report = { name: error.name, message: error.message };
  if (error.statusCode !== undefined) report.statusCode = error.statusCode;
  return report;
}

async function act(chat, action) {
  if ("send" in action) {
    const message = { text: action.send };
    if (action.files) message.files = action.files;
    return chat.sendMessage(message);
  }
  if (action.regenerate) return chat.regenerate();
  throw new Error(`unknown action ${JSON.stringify(action)}`);
}

/** One action, given up (and the chat stopped) after ACTION_TIMEOUT_MS. */
async function actWithin(chat, action) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve("timeout"), ACTION_TIMEOUT_MS);
  });
  try {
    const outcome = await Promise.race([act(chat, action), timeout]);
    if (outcome === "timeout") {
      await chat.stop();
      return `timed out after ${ACTION_TIMEOUT_MS} ms`;
    }
    return null;
  } catch (error) {
    return `threw ${error?.name}: ${error?.message}`;
  } finally {
    clearTimeout(timer);
  }
}

async function run(scenario) {
  const responses = [];
  const reads = [];
  const chat = new Chat({
    transport: new DefaultChatTransport({
      api: `${baseUrl}/api/chat`,
      fetch: recordingFetch(responses, reads),
    }),
  });
  const steps = [];
  for (const action of scenario.actions) {
    const problem = await actWithin(chat, action);
    steps.push({ status: chat.status, error: errorReport(chat.error), problem });
  }
  await Promise.all(reads);
  return {
    messages: chat.messages,
    status: chat.status,
    error: errorReport(chat.error),
    steps,
    responses,
  };
}

process.stdin.setEncoding("utf8");
let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = {};
for (const scenario of JSON.parse(input)) {
  results[scenario.name] = await run(scenario);
}
process.stdout.write(JSON.stringify(results));
