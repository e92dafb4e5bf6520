#!/usr/bin/env node
// An MCP server for the conformance suite's server scenarios
// (`conformance list --server`), built on the TypeScript SDK's low-level `Server` so that tool
// input schemas go out exactly as written here (the json-schema-2020-12 scenario checks that
// `$schema`, `$defs` and `additionalProperties` survive).
//
//   node conformance_server.mjs [--port 3001] [--host 127.0.0.1] [--stateless] [--json]
//
//   default      stateful: the SDK transport issues its own session IDs (random UUIDs), keeps an
//                event store so SSE streams can be resumed with Last-Event-ID, serves GET
//                streams and DELETE. Behind the filter this is the "stateful upstream" case.
//   --stateless  no session IDs at all: a new server and transport for every POST; GET and
//                DELETE answer 405. Behind the filter, the filter's session ID is the only one.
//                Server-to-client requests (sampling, elicitation) cannot work here: the client's
//                answer would arrive on another POST, which a fresh transport knows nothing
//                about, so those tools fail at once with a tool error instead of waiting for an
//                answer that never comes (the client would time out after 60 s).
//   --json       answer POSTs with application/json instead of an SSE stream (notifications
//                sent during a tool call are then dropped).
//
// The endpoint is /mcp. When listening, one line goes to stdout:
//   {"ready":true,"url":"http://127.0.0.1:PORT/mcp","mode":"stateful"}
// (--port 0 picks a free port). Host header validation (DNS rebinding protection, port
// agnostic) is on when --host is a loopback address, as the dns-rebinding-protection scenario
// expects; through Envoy the Host header is passed unchanged, so the same check applies.
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { deflateSync } from 'node:zlib';

import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  ErrorCode,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  McpError,
  ReadResourceRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  isInitializeRequest,
} from '@modelcontextprotocol/sdk/types.js';

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: '3001' },
    host: { type: 'string', default: '127.0.0.1' },
    stateless: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
const MODE = opts.stateless ? 'stateless' : 'stateful';

// ---- test media, made here rather than pasted in ----

// CRC-32 as PNG wants it (zlib.crc32 needs Node 22.2; this works anywhere).
function crc32(buf) {
  let c = ~0;
  for (const byte of buf) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

function pngChunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

// A 1x1 red pixel, 8-bit RGB.
function onePixelPng() {
  const ihdr = Buffer.from([0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0]);
  const scanline = Buffer.from([0, 0xff, 0, 0]); // filter byte, then R G B
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(scanline)),
    pngChunk('IEND', Buffer.alloc(0)),
  ]).toString('base64');
}

// 10 ms of silence: 16-bit mono PCM at 8 kHz.
function silentWav() {
  const samples = 80;
  const data = Buffer.alloc(samples * 2);
  const header = Buffer.alloc(44);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVEfmt ', 8, 'ascii');
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // channels
  header.writeUInt32LE(8000, 24); // sample rate
  header.writeUInt32LE(16000, 28); // byte rate
  header.writeUInt16LE(2, 32); // block align
  header.writeUInt16LE(16, 34); // bits per sample
  header.write('data', 36, 'ascii');
  header.writeUInt32LE(data.length, 40);
  return Buffer.concat([header, data]).toString('base64');
}

const PNG = onePixelPng();
const WAV = silentWav();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const text = (t) => ({ type: 'text', text: t });
const noArgs = { type: 'object', properties: {} };

// ---- tools ----
// Each entry: the tool as listed, and its handler (args, extra) => CallToolResult.

const tools = [
  {
    name: 'echo',
    description: 'Returns the message it is given',
    inputSchema: { type: 'object', properties: { message: { type: 'string' } }, required: ['message'] },
    run: async (args) => ({ content: [text(String(args.message ?? ''))] }),
  },
  {
    name: 'test_simple_text',
    description: 'Returns one text item',
    inputSchema: noArgs,
    run: async () => ({ content: [text('This is a simple text response for testing.')] }),
  },
  {
    name: 'test_image_content',
    description: 'Returns one image item (PNG)',
    inputSchema: noArgs,
    run: async () => ({ content: [{ type: 'image', data: PNG, mimeType: 'image/png' }] }),
  },
  {
    name: 'test_audio_content',
    description: 'Returns one audio item (WAV)',
    inputSchema: noArgs,
    run: async () => ({ content: [{ type: 'audio', data: WAV, mimeType: 'audio/wav' }] }),
  },
  {
    name: 'test_embedded_resource',
    description: 'Returns one embedded text resource',
    inputSchema: noArgs,
    run: async () => ({
      content: [
        {
          type: 'resource',
          resource: {
            uri: 'test://embedded-resource',
            mimeType: 'text/plain',
            text: 'This is an embedded resource content.',
          },
        },
      ],
    }),
  },
  {
    name: 'test_multiple_content_types',
    description: 'Returns text, image and resource items together',
    inputSchema: noArgs,
    run: async () => ({
      content: [
        text('Multiple content types test:'),
        { type: 'image', data: PNG, mimeType: 'image/png' },
        {
          type: 'resource',
          resource: {
            uri: 'test://mixed-content-resource',
            mimeType: 'application/json',
            text: JSON.stringify({ test: 'data', value: 123 }),
          },
        },
      ],
    }),
  },
  {
    name: 'test_tool_with_logging',
    description: 'Sends three log notifications while it runs',
    inputSchema: noArgs,
    run: async (_args, extra) => {
      const steps = ['Tool execution started', 'Tool processing data', 'Tool execution completed'];
      for (const [i, step] of steps.entries()) {
        if (i > 0) await sleep(50);
        await extra.sendNotification({
          method: 'notifications/message',
          params: { level: 'info', logger: 'conformance-server', data: step },
        });
      }
      return { content: [text('Tool with logging executed successfully')] };
    },
  },
  {
    name: 'test_tool_with_progress',
    description: 'Reports progress 0, 50 and 100 of 100 when given a progress token',
    inputSchema: noArgs,
    run: async (_args, extra) => {
      const token = extra._meta?.progressToken;
      for (const [i, progress] of [0, 50, 100].entries()) {
        if (i > 0) await sleep(50);
        if (token !== undefined) {
          await extra.sendNotification({
            method: 'notifications/progress',
            params: { progressToken: token, progress, total: 100, message: `step ${progress}/100` },
          });
        }
      }
      return { content: [text(`progress reported for token ${String(token)}`)] };
    },
  },
  {
    name: 'test_error_handling',
    description: 'Always fails with a tool error (isError: true)',
    inputSchema: noArgs,
    run: async () => ({
      isError: true,
      content: [text('This tool intentionally returns an error for testing')],
    }),
  },
  {
    name: 'test_reconnection',
    description: 'Closes its SSE stream mid-call; the result is sent after the client resumes',
    inputSchema: noArgs,
    run: async (_args, extra) => {
      // Only offered by the transport when the stream is resumable (event store, 2025-11-25+).
      extra.closeSSEStream?.();
      await sleep(100);
      return { content: [text('Reconnection test completed.')] };
    },
  },
  {
    name: 'test_sampling',
    clientRequest: true,
    description: 'Asks the client for an LLM completion (sampling/createMessage)',
    inputSchema: { type: 'object', properties: { prompt: { type: 'string' } }, required: ['prompt'] },
    run: async (args, extra) => {
      const result = await extra.sendRequest(
        {
          method: 'sampling/createMessage',
          params: {
            messages: [{ role: 'user', content: text(String(args.prompt ?? '')) }],
            maxTokens: 100,
          },
        },
        CreateMessageResultSchema,
      );
      return { content: [text(`LLM response: ${result.content?.text ?? ''}`)] };
    },
  },
  {
    name: 'test_elicitation',
    clientRequest: true,
    description: 'Asks the user for input (elicitation/create)',
    inputSchema: { type: 'object', properties: { message: { type: 'string' } }, required: ['message'] },
    run: async (args, extra) =>
      elicit(extra, String(args.message ?? ''), {
        type: 'object',
        properties: {
          username: { type: 'string', description: "User's response" },
          email: { type: 'string', description: "User's email address" },
        },
        required: ['username', 'email'],
      }),
  },
  {
    name: 'test_elicitation_sep1034_defaults',
    clientRequest: true,
    description: 'Elicitation whose schema has a default for every primitive type (SEP-1034)',
    inputSchema: noArgs,
    run: async (_args, extra) =>
      elicit(extra, 'Please review these fields', {
        type: 'object',
        properties: {
          name: { type: 'string', description: 'User name', default: 'John Doe' },
          age: { type: 'integer', description: 'User age', default: 30 },
          score: { type: 'number', description: 'User score', default: 95.5 },
          status: {
            type: 'string',
            description: 'User status',
            enum: ['active', 'inactive', 'pending'],
            default: 'active',
          },
          verified: { type: 'boolean', description: 'Verification status', default: true },
        },
        required: [],
      }),
  },
  {
    name: 'test_elicitation_sep1330_enums',
    clientRequest: true,
    description: 'Elicitation with the five enum schema forms (SEP-1330)',
    inputSchema: noArgs,
    run: async (_args, extra) =>
      elicit(extra, 'Please choose', {
        type: 'object',
        properties: {
          untitledSingle: { type: 'string', enum: ['option1', 'option2', 'option3'] },
          titledSingle: {
            type: 'string',
            oneOf: [
              { const: 'value1', title: 'First Option' },
              { const: 'value2', title: 'Second Option' },
              { const: 'value3', title: 'Third Option' },
            ],
          },
          legacyEnum: {
            type: 'string',
            enum: ['opt1', 'opt2', 'opt3'],
            enumNames: ['Option One', 'Option Two', 'Option Three'],
          },
          untitledMulti: {
            type: 'array',
            items: { type: 'string', enum: ['option1', 'option2', 'option3'] },
          },
          titledMulti: {
            type: 'array',
            items: {
              anyOf: [
                { const: 'value1', title: 'First Choice' },
                { const: 'value2', title: 'Second Choice' },
                { const: 'value3', title: 'Third Choice' },
              ],
            },
          },
        },
        required: [],
      }),
  },
  {
    name: 'json_schema_2020_12_tool',
    description: 'Tool with JSON Schema 2020-12 features',
    inputSchema: {
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      type: 'object',
      $defs: {
        address: {
          type: 'object',
          properties: { street: { type: 'string' }, city: { type: 'string' } },
        },
      },
      properties: { name: { type: 'string' }, address: { $ref: '#/$defs/address' } },
      additionalProperties: false,
    },
    run: async (args) => ({ content: [text(`received ${JSON.stringify(args)}`)] }),
  },
];

async function elicit(extra, message, requestedSchema) {
  const result = await extra.sendRequest(
    { method: 'elicitation/create', params: { mode: 'form', message, requestedSchema } },
    ElicitResultSchema,
  );
  return {
    content: [
      text(`Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`),
    ],
  };
}

// ---- resources and prompts ----

const resources = [
  {
    uri: 'test://static-text',
    name: 'static-text',
    description: 'A fixed text resource',
    mimeType: 'text/plain',
    read: () => ({ text: 'This is the content of the static text resource.' }),
  },
  {
    uri: 'test://static-binary',
    name: 'static-binary',
    description: 'A fixed binary resource (PNG)',
    mimeType: 'image/png',
    read: () => ({ blob: PNG }),
  },
  {
    uri: 'test://watched-resource',
    name: 'watched-resource',
    description: 'A resource clients may subscribe to',
    mimeType: 'text/plain',
    read: () => ({ text: 'Watched resource content' }),
  },
];

const TEMPLATE = /^test:\/\/template\/([^/]+)\/data$/;

const prompts = [
  {
    name: 'test_simple_prompt',
    description: 'A prompt without arguments',
    get: () => [{ role: 'user', content: text('This is a simple prompt for testing.') }],
  },
  {
    name: 'test_prompt_with_arguments',
    description: 'A prompt with two arguments',
    arguments: [
      { name: 'arg1', description: 'First argument', required: true },
      { name: 'arg2', description: 'Second argument', required: true },
    ],
    get: (a) => [
      { role: 'user', content: text(`Prompt with arguments: arg1='${a.arg1}', arg2='${a.arg2}'`) },
    ],
  },
  {
    name: 'test_prompt_with_embedded_resource',
    description: 'A prompt that embeds a resource',
    arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }],
    get: (a) => [
      {
        role: 'user',
        content: {
          type: 'resource',
          resource: {
            uri: a.resourceUri,
            mimeType: 'text/plain',
            text: 'Embedded resource content for testing.',
          },
        },
      },
      { role: 'user', content: text('Please process the embedded resource above.') },
    ],
  },
  {
    name: 'test_prompt_with_image',
    description: 'A prompt that contains an image',
    get: () => [
      { role: 'user', content: { type: 'image', data: PNG, mimeType: 'image/png' } },
      { role: 'user', content: text('Please analyze the image above.') },
    ],
  },
];

// ---- the MCP server: one per session (stateful) or per request (stateless) ----

function createServer() {
  const server = new Server(
    { name: 'mcp-session-filter-conformance-server', version: '1.0.0' },
    {
      capabilities: {
        tools: {},
        resources: { subscribe: true },
        prompts: {},
        logging: {},
        completions: {},
      },
    },
  );

  server.setRequestHandler(ListToolsRequestSchema, async () => ({
    tools: tools.map(({ name, description, inputSchema }) => ({ name, description, inputSchema })),
  }));
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const tool = tools.find((t) => t.name === request.params.name);
    if (!tool) throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${request.params.name}`);
    if (tool.clientRequest && opts.stateless) {
      return { isError: true, content: [text(`${tool.name} needs a stateful server: it asks the client a question`)] };
    }
    try {
      return await tool.run(request.params.arguments ?? {}, extra);
    } catch (err) {
      return { isError: true, content: [text(`${tool.name} failed: ${err?.message ?? err}`)] };
    }
  });

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({
    resources: resources.map(({ uri, name, description, mimeType }) => ({ uri, name, description, mimeType })),
  }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({
    resourceTemplates: [
      {
        uriTemplate: 'test://template/{id}/data',
        name: 'template-data',
        description: 'Data for an id',
        mimeType: 'application/json',
      },
    ],
  }));
  server.setRequestHandler(ReadResourceRequestSchema, async (request) => {
    const { uri } = request.params;
    const fixed = resources.find((r) => r.uri === uri);
    if (fixed) return { contents: [{ uri, mimeType: fixed.mimeType, ...fixed.read() }] };
    const m = TEMPLATE.exec(uri);
    if (m) {
      const id = decodeURIComponent(m[1]);
      const body = { id, templateTest: true, data: `Data for ID: ${id}` };
      return { contents: [{ uri, mimeType: 'application/json', text: JSON.stringify(body) }] };
    }
    throw new McpError(ErrorCode.InvalidParams, `Resource not found: ${uri}`);
  });
  server.setRequestHandler(SubscribeRequestSchema, async () => ({}));
  server.setRequestHandler(UnsubscribeRequestSchema, async () => ({}));

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({
    prompts: prompts.map(({ name, description, arguments: args }) => ({ name, description, arguments: args })),
  }));
  server.setRequestHandler(GetPromptRequestSchema, async (request) => {
    const prompt = prompts.find((p) => p.name === request.params.name);
    if (!prompt) throw new McpError(ErrorCode.InvalidParams, `Unknown prompt: ${request.params.name}`);
    return { description: prompt.description, messages: prompt.get(request.params.arguments ?? {}) };
  });

  server.setRequestHandler(CompleteRequestSchema, async (request) => {
    const prefix = String(request.params.argument?.value ?? '');
    const values = ['paris', 'park', 'party', 'test', 'testing'].filter((v) => v.startsWith(prefix));
    return { completion: { values, total: values.length, hasMore: false } };
  });

  return server;
}

// An in-memory event store, so a client can resume an SSE stream with Last-Event-ID.
function createEventStore() {
  const events = []; // { id, streamId, message } in the order stored
  let next = 0;
  return {
    async storeEvent(streamId, message) {
      const id = `${++next}`;
      events.push({ id, streamId, message });
      return id;
    },
    async getStreamIdForEventId(eventId) {
      return events.find((e) => e.id === eventId)?.streamId;
    },
    async replayEventsAfter(lastEventId, { send }) {
      const at = events.findIndex((e) => e.id === lastEventId);
      if (at < 0) return '';
      const { streamId } = events[at];
      for (const e of events.slice(at + 1)) {
        // Priming events are stored as {} and are not replayed.
        if (e.streamId === streamId && Object.keys(e.message).length > 0) await send(e.id, e.message);
      }
      return streamId;
    },
  };
}

function jsonRpcError(res, status, code, message) {
  res.status(status).json({ jsonrpc: '2.0', error: { code, message }, id: null });
}

// ---- HTTP ----

const app = createMcpExpressApp({ host: opts.host });
const sessions = new Map(); // session ID -> transport (stateful mode)

async function handleStateful(req, res) {
  const sessionId = req.get('mcp-session-id');
  if (sessionId) {
    const transport = sessions.get(sessionId);
    if (!transport) return jsonRpcError(res, 404, -32001, 'Session not found');
    return transport.handleRequest(req, res, req.body);
  }
  if (req.method !== 'POST' || !isInitializeRequest(req.body)) {
    return jsonRpcError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
  }
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    enableJsonResponse: opts.json,
    eventStore: createEventStore(),
    retryInterval: 500,
    onsessioninitialized: (id) => sessions.set(id, transport),
    onsessionclosed: (id) => sessions.delete(id),
  });
  transport.onclose = () => {
    if (transport.sessionId) sessions.delete(transport.sessionId);
  };
  await createServer().connect(transport);
  return transport.handleRequest(req, res, req.body);
}

async function handleStateless(req, res) {
  if (req.method !== 'POST') {
    res.set('allow', 'POST');
    return jsonRpcError(res, 405, -32000, 'Method Not Allowed: this server keeps no sessions');
  }
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: undefined,
    enableJsonResponse: opts.json,
  });
  const server = createServer();
  res.on('close', () => {
    transport.close();
    server.close();
  });
  await server.connect(transport);
  return transport.handleRequest(req, res, req.body);
}

app.all('/mcp', async (req, res) => {
  try {
    await (opts.stateless ? handleStateless(req, res) : handleStateful(req, res));
  } catch (err) {
    console.error('request failed:', err);
    if (!res.headersSent) jsonRpcError(res, 500, ErrorCode.InternalError, 'Internal error');
  }
});

const listener = app.listen(Number(opts.port), opts.host, () => {
  const { port } = listener.address();
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  console.log(JSON.stringify({ ready: true, url: `http://${host}:${port}/mcp`, mode: MODE, json: opts.json }));
});

function shutdown() {
  for (const transport of sessions.values()) transport.close().catch(() => {});
  listener.close();
  listener.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
