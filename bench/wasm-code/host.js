// A small proxy-wasm host for Node (V8, as in Envoy) that runs the filter's session hot path
// in a loop: an initialize, notifications/initialized, then N tools/call requests on the
// session, each through every callback Envoy makes (context create, request headers and body,
// response headers and body, log, done, delete). It answers the hostcalls the filter makes
// (header maps, buffers, shared data, stats, the clock) from memory, and nothing else.
//
// Not a test of behaviour (that is Envoy's, in tests/e2e): a way to see which of the module's
// functions the Wasm instructions of a request go to, which Envoy's release binary cannot
// show. Run by bench/wasm-code/run.sh under callgrind, with V8's map of its generated code.
//
//   node --no-liftoff host.js FILTER.wasm N     (WARM=n sets the requests before the N)
"use strict";
const fs = require("fs");
const crypto = require("crypto");

const [wasmPath, countArg] = process.argv.slice(2);
const N = parseInt(countArg || "200000", 10);
const WARM = parseInt(process.env.WARM || "20000", 10);

const module_ = new WebAssembly.Module(fs.readFileSync(wasmPath));
let exports_;
const bytes = () => new Uint8Array(exports_.memory.buffer);
const view = () => new DataView(exports_.memory.buffer);
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const text = (ptr, len) => decoder.decode(bytes().subarray(ptr, ptr + len));

// The proxy-wasm ABI's statuses and enums this host uses.
const OK = 0, NOT_FOUND = 1, CAS_MISMATCH = 8;
const REQUEST_HEADERS = 0, REQUEST_BODY = 0, RESPONSE_BODY = 1, PLUGIN_CONFIGURATION = 7;

// What the filter sees: the stream's headers and bodies, the process's shared data and stats.
let now = 1767225600000n * 1000000n;
const stats = [];
const shared = new Map();
let nextCas = 1;
let requestHeaders = [], responseHeaders = [], requestBody = "", responseBody = "";
let localReply = null;
const configuration = "{}";
const encoded = new Map();
const encode = (s) => {
  if (!encoded.has(s)) encoded.set(s, encoder.encode(s));
  return encoded.get(s);
};

// Copies `data` into memory the module allocates, and writes its address and size where the
// module asked, as a host hands over every buffer.
function handOver(data, ptrAt, sizeAt) {
  const ptr = exports_.proxy_on_memory_allocate(data.length);
  bytes().set(data, ptr);
  view().setUint32(ptrAt, ptr, true);
  view().setUint32(sizeAt, data.length, true);
}

// The ABI's serialized header map: a count, each pair's sizes, then each name and value
// followed by a NUL.
function serialize(pairs) {
  const parts = pairs.map(([k, v]) => [encoder.encode(k), encoder.encode(v)]);
  let size = 4 + parts.length * 8;
  for (const [k, v] of parts) size += k.length + v.length + 2;
  const out = new Uint8Array(size);
  const d = new DataView(out.buffer);
  d.setUint32(0, parts.length, true);
  let at = 4;
  for (const [k, v] of parts) {
    d.setUint32(at, k.length, true);
    d.setUint32(at + 4, v.length, true);
    at += 8;
  }
  for (const [k, v] of parts) {
    out.set(k, at);
    at += k.length + 1;
    out.set(v, at);
    at += v.length + 1;
  }
  return out;
}

const headersOf = (type) => (type === REQUEST_HEADERS ? requestHeaders : responseHeaders);

const env = {
  proxy_log: (level, ptr, len) => {
    if (process.env.LOG) console.error("log", level, text(ptr, len));
    return OK;
  },
  proxy_get_log_level: (at) => (view().setUint32(at, 2, true), OK),
  proxy_define_metric: (_type, _ptr, _len, idAt) => {
    stats.push(0n);
    view().setUint32(idAt, stats.length - 1, true);
    return OK;
  },
  proxy_increment_metric: (id, delta) => ((stats[id] += delta), OK),
  proxy_record_metric: (id, value) => ((stats[id] = value), OK),
  proxy_get_metric: (id, at) => (view().setBigUint64(at, BigInt.asUintN(64, stats[id]), true), OK),
  proxy_get_current_time_nanoseconds: (at) => (view().setBigUint64(at, now, true), OK),
  proxy_get_buffer_bytes: (type, start, length, ptrAt, sizeAt) => {
    const source = { [PLUGIN_CONFIGURATION]: configuration, [REQUEST_BODY]: requestBody, [RESPONSE_BODY]: responseBody }[type] ?? "";
    const from = start >>> 0;
    handOver(encode(source).subarray(from, from + (length >>> 0)), ptrAt, sizeAt);
    return OK;
  },
  proxy_get_header_map_pairs: (type, ptrAt, sizeAt) => {
    const pairs = headersOf(type);
    pairs.serialized ??= serialize(pairs);
    handOver(pairs.serialized, ptrAt, sizeAt);
    return OK;
  },
  proxy_get_header_map_value: (type, keyPtr, keyLen, ptrAt, sizeAt) => {
    const key = text(keyPtr, keyLen);
    const pair = headersOf(type).find(([name]) => name === key);
    if (!pair) return NOT_FOUND;
    handOver(encoder.encode(pair[1]), ptrAt, sizeAt);
    return OK;
  },
  proxy_add_header_map_value: (type, kp, kl, vp, vl) => {
    headersOf(type).push([text(kp, kl), text(vp, vl)]);
    return OK;
  },
  proxy_replace_header_map_value: (type, kp, kl, vp, vl) => {
    const pairs = headersOf(type), key = text(kp, kl);
    const at = pairs.findIndex(([name]) => name === key);
    if (at >= 0) pairs[at] = [key, text(vp, vl)];
    else pairs.push([key, text(vp, vl)]);
    return OK;
  },
  proxy_remove_header_map_value: (type, kp, kl) => {
    const pairs = headersOf(type), key = text(kp, kl);
    for (let at = pairs.length - 1; at >= 0; at--) if (pairs[at][0] === key) pairs.splice(at, 1);
    return OK;
  },
  proxy_get_shared_data: (kp, kl, ptrAt, sizeAt, casAt) => {
    const entry = shared.get(text(kp, kl));
    if (!entry) return NOT_FOUND;
    handOver(entry.value, ptrAt, sizeAt);
    view().setUint32(casAt, entry.cas, true);
    return OK;
  },
  proxy_set_shared_data: (kp, kl, vp, vl, cas) => {
    const key = text(kp, kl), entry = shared.get(key);
    if (entry && cas !== 0 && entry.cas !== cas) return CAS_MISMATCH;
    shared.set(key, { value: bytes().slice(vp, vp + vl), cas: nextCas++ });
    return OK;
  },
  proxy_get_property: () => NOT_FOUND,
  proxy_send_local_response: (status) => ((localReply = status), OK),
};
const wasi = {
  random_get: (ptr, len) => (crypto.randomFillSync(bytes().subarray(ptr, ptr + len)), OK),
  environ_sizes_get: (countAt, sizeAt) => {
    view().setUint32(countAt, 0, true);
    view().setUint32(sizeAt, 0, true);
    return OK;
  },
  proc_exit: (code) => {
    throw new Error(`the module exited with ${code}`);
  },
};
// Every other import answers Ok and does nothing.
const imports = { env: {}, wasi_snapshot_preview1: {} };
for (const { module, name } of WebAssembly.Module.imports(module_)) {
  const table = module === "env" ? env : wasi;
  imports[module][name] = table[name] || (() => OK);
}
exports_ = new WebAssembly.Instance(module_, imports).exports;

exports_._initialize();
exports_.proxy_on_context_create(1, 0);
exports_.proxy_on_vm_start(1, 0);
if (!exports_.proxy_on_configure(1, configuration.length)) throw new Error("configuration refused");

let nextContext = 2;
function exchange(headers, body, status, upstreamHeaders, upstreamBody) {
  const context = nextContext++;
  localReply = null;
  requestHeaders = headers;
  requestBody = body;
  responseHeaders = [[":status", String(status)], ...upstreamHeaders];
  responseBody = upstreamBody;
  exports_.proxy_on_context_create(context, 1);
  exports_.proxy_on_request_headers(context, requestHeaders.length, 0);
  if (localReply === null) exports_.proxy_on_request_body(context, requestBody.length, 1);
  if (localReply === null) {
    exports_.proxy_on_response_headers(context, responseHeaders.length, 0);
    exports_.proxy_on_response_body(context, responseBody.length, 1);
  }
  exports_.proxy_on_log(context);
  exports_.proxy_on_done(context);
  exports_.proxy_on_delete(context);
  return localReply;
}

// The headers of bench/bench.py's requests as Envoy hands them to a filter.
const base = [
  [":authority", "127.0.0.1:10001"], [":path", "/mcp"], [":method", "POST"], [":scheme", "http"],
  ["accept", "application/json, text/event-stream"], ["accept-encoding", "gzip, deflate"],
  ["connection", "keep-alive"], ["user-agent", "python-httpx/0.28.1"], ["content-type", "application/json"],
];
const json = [["content-type", "application/json"]];
const initialize = '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}';
exchange(
  [...base, ["mcp-protocol-version", "2025-11-25"], ["content-length", String(initialize.length)],
    ["x-forwarded-proto", "http"], ["x-request-id", "8f1e2c1a"]],
  initialize, 200, json,
  '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"s","version":"1"}}}',
);
const session = (responseHeaders.find(([name]) => name === "mcp-session-id") || [])[1];
if (!session) throw new Error(`no session minted (local reply ${localReply})`);
const onSession = [
  ...base, ["mcp-session-id", session], ["mcp-protocol-version", "2025-11-25"], ["content-length", "60"],
  ["x-forwarded-proto", "http"], ["x-request-id", "8f1e2c1a-6a1b-4b9f-9b5a-3c0f1e9d2a77"],
];
exchange(onSession, '{"jsonrpc":"2.0","method":"notifications/initialized"}', 202, [], "");

const call = '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{}}}';
const hotPath = () => exchange(onSession, call, 200, json, '{"jsonrpc":"2.0","id":2,"result":{}}');
for (let i = 0; i < WARM; i++) {
  now += 1000000n;
  if (hotPath() !== null) throw new Error(`the hot path was answered locally: ${localReply}`);
}
const started = process.hrtime.bigint();
for (let i = 0; i < N; i++) {
  now += 1000000n;
  hotPath();
}
const took = process.hrtime.bigint() - started;
console.log(`hot path: ${(Number(took) / N).toFixed(0)} ns per request over ${N} (host included)`);
