// The Express + official openai SDK baseline for `make bench`: the usual Node answer.
//
// Written as tutorials do: one client, `for await` over the SDK's stream, each delta
// pasted after "data: ". OPENAI_API_KEY and OPENAI_BASE_URL come from the
// environment; for TLS to the fake upstream, NODE_EXTRA_CA_CERTS names its CA.
// node server.js 8000
"use strict";

const express = require("express");
const OpenAI = require("openai");

const client = new OpenAI();
const model = process.env.OPENAI_MODEL || "gpt-4o-mini";
const app = express();

app.get("/completionChat", async (req, res) => {
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: String(req.query.prompt || "") }],
    stream: true,
    stream_options: { include_usage: true },
  });
  res.setHeader("Content-Type", "text/event-stream");
  res.setHeader("Cache-Control", "no-cache");
  for await (const chunk of stream) {
    const content = chunk.choices[0]?.delta?.content;
    if (content) res.write("data: " + content + "\n\n");
  }
  res.write("data: [DONE]\n\n");
  res.end();
});

app.listen(Number(process.argv[2] || 8000), "127.0.0.1");
