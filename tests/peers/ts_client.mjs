#!/usr/bin/env node
// The TypeScript SDK client as a peer for the end-to-end tests.
//
//   node ts_client.mjs URL [--message TEXT] [--header NAME:VALUE]...
//
// Connects with StreamableHTTPClientTransport (initialize, notifications/initialized), lists the
// tools, calls `echo` with TEXT, then ends the session with terminateSession() (HTTP DELETE).
// Prints one line of JSON on stdout, also on failure, and exits 1 on failure:
//   {"ok":true,"session_id":"…","protocol_version":"2025-11-25","tools":["echo",…],
//    "echo":"TEXT","session_id_after_terminate":null,
//    "http":[{"method":"POST","rpc":"initialize","status":200,"session_id":null}, …]}
// `session_id` is the ID the transport held (for a test: the one the filter minted); `http` lists
// every HTTP exchange with the session header the client sent.
import { parseArgs } from 'node:util';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    message: { type: 'string', default: 'hello from the TypeScript SDK' },
    header: { type: 'string', multiple: true, default: [] },
    timeout: { type: 'string', default: '10000' },
  },
});

const summary = { ok: false, url: positionals[0] ?? null, stage: 'arguments' };
const http = [];

function finish(code) {
  process.stdout.write(`${JSON.stringify({ ...summary, http })}\n`);
  process.exit(code);
}

if (positionals.length !== 1) {
  summary.error = 'usage: ts_client.mjs URL [--message TEXT] [--header NAME:VALUE]...';
  finish(2);
}

const headers = {};
for (const h of opts.header) {
  const at = h.indexOf(':');
  if (at <= 0) {
    summary.error = `bad --header ${JSON.stringify(h)}: expected NAME:VALUE`;
    finish(2);
  }
  headers[h.slice(0, at).trim()] = h.slice(at + 1).trim();
}

// Record every exchange: method, JSON-RPC method(s) in the body, status, session header sent.
async function recordingFetch(url, init = {}) {
  let rpc = null;
  if (typeof init.body === 'string') {
    try {
      const body = JSON.parse(init.body);
      const methods = (Array.isArray(body) ? body : [body]).map((m) => m.method ?? 'response');
      rpc = methods.join(',');
    } catch {
      rpc = 'unparsed';
    }
  }
  const sent = new Headers(init.headers);
  const entry = { method: init.method ?? 'GET', rpc, status: null, session_id: sent.get('mcp-session-id') };
  http.push(entry);
  const response = await fetch(url, init);
  entry.status = response.status;
  return response;
}

// The first string property of the tool's input schema, preferring required ones.
function messageArgument(tool) {
  const props = tool?.inputSchema?.properties ?? {};
  const strings = Object.keys(props).filter((k) => props[k]?.type === 'string');
  const required = (tool?.inputSchema?.required ?? []).filter((k) => strings.includes(k));
  return required[0] ?? strings[0] ?? 'message';
}

const timeout = Number(opts.timeout);
const client = new Client({ name: 'mcp-session-filter-ts-peer', version: '1.0.0' });
const transport = new StreamableHTTPClientTransport(new URL(positionals[0]), {
  requestInit: { headers },
  fetch: recordingFetch,
});

try {
  summary.stage = 'connect';
  await client.connect(transport, { timeout });
  summary.session_id = transport.sessionId ?? null;
  summary.protocol_version = transport.protocolVersion ?? null;

  summary.stage = 'tools/list';
  const { tools } = await client.listTools(undefined, { timeout });
  summary.tools = tools.map((t) => t.name);
  const echo = tools.find((t) => t.name === 'echo');
  if (!echo) throw new Error(`the server has no echo tool (tools: ${summary.tools.join(', ')})`);

  summary.stage = 'tools/call echo';
  const result = await client.callTool(
    { name: 'echo', arguments: { [messageArgument(echo)]: opts.message } },
    undefined,
    { timeout },
  );
  if (result.isError) throw new Error(`echo returned a tool error: ${JSON.stringify(result.content)}`);
  summary.echo = (result.content ?? [])
    .filter((c) => c.type === 'text')
    .map((c) => c.text)
    .join('');
  if (summary.echo !== opts.message) {
    throw new Error(`echo answered ${JSON.stringify(summary.echo)}, expected ${JSON.stringify(opts.message)}`);
  }

  summary.stage = 'terminateSession';
  await transport.terminateSession();
  summary.session_id_after_terminate = transport.sessionId ?? null;

  summary.stage = 'close';
  await client.close();
  summary.stage = 'done';
  summary.ok = true;
} catch (err) {
  summary.error = err instanceof Error ? err.message : String(err);
  if (err?.code !== undefined) summary.error_code = err.code;
  process.stderr.write(`ts_client: ${summary.stage} failed: ${err?.stack ?? err}\n`);
  await client.close().catch(() => {});
}
finish(summary.ok ? 0 : 1);
