-- The benchmark's wrk script: one POST, described by the environment, and a done() that
-- prints the run's numbers as one JSON line (prefixed "BENCH_RESULT ") for bench/bench.py.
--
--   BENCH_BODY_FILE  the request body (read once, sent as is)
--   BENCH_HEADERS    extra headers, one "name: value" per line
--   BENCH_PATH       the request path (default /mcp)
--
-- No request() or response() callback: a Lua call per request would slow wrk itself down, and
-- the load generator must never be the bottleneck. Statuses other than 2xx/3xx are counted by
-- wrk itself (errors.status), which is how bench.py checks each run answered as expected.

local function read_file(path)
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   return data
end

wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/mcp"
wrk.body = read_file(assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE is not set"))
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
   local name, value = line:match("^%s*([^:]+):%s*(.-)%s*$")
   if name then
      wrk.headers[name] = value
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.3f,"stdev":%.3f,"max":%d,' ..
      '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9)))
end
