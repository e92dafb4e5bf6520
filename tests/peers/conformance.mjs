#!/usr/bin/env node
// Runs the MCP conformance suite's server scenarios against a URL and prints one line of JSON
// with the outcome of each scenario, so a test can compare two runs (e.g. directly against the
// upstream, then through Envoy and the filter).
//
//   node conformance.mjs URL [--suite all|active|pending] [--scenario NAME]...
//
// Output (stdout, one line):
//   {"url":"…","exit_code":0,"scenarios":{"ping":{"result":"pass","failures":[],"warnings":[]},…}}
// `result` is "fail" when any check of the scenario failed; warnings (e.g. "server did not
// provide a session ID") do not fail a scenario, they are listed by check id. The suite's own
// output goes to stderr. Exit code: the suite's (non-zero when a scenario failed).
// Needs Node 22+ (the suite's requirement); scripts/setup_node.sh provides it.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    suite: { type: 'string', default: 'all' },
    scenario: { type: 'string', multiple: true, default: [] },
  },
});
if (positionals.length !== 1) {
  process.stderr.write('usage: conformance.mjs URL [--suite all|active|pending] [--scenario NAME]...\n');
  process.exit(2);
}
const [url] = positionals;
const cli = join(dirname(fileURLToPath(import.meta.url)), 'node_modules/@modelcontextprotocol/conformance/dist/index.js');
const out = mkdtempSync(join(tmpdir(), 'mcp-conformance-'));

// One run of the CLI per --scenario, or one run of the whole suite.
const runs = opts.scenario.length > 0 ? opts.scenario.map((s) => ['--scenario', s]) : [['--suite', opts.suite]];
let exitCode = 0;
for (const selection of runs) {
  const run = spawnSync(process.execPath, [cli, 'server', '--url', url, ...selection, '-o', out], {
    stdio: ['ignore', process.stderr, process.stderr],
  });
  const code = run.status ?? 1;
  if (code !== 0) exitCode = code;
}

// The CLI writes <out>/server-<scenario>-<ISO time with : and . as ->/checks.json.
const scenarios = {};
for (const dir of readdirSync(out).sort()) {
  const m = /^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/.exec(dir);
  if (!m) continue;
  const checks = JSON.parse(readFileSync(join(out, dir, 'checks.json'), 'utf8'));
  const ids = (status) => checks.filter((c) => c.status === status).map((c) => c.id);
  const failures = ids('FAILURE');
  scenarios[m[1]] = { result: failures.length === 0 ? 'pass' : 'fail', failures, warnings: ids('WARNING') };
}
rmSync(out, { recursive: true, force: true });

process.stdout.write(`${JSON.stringify({ url, exit_code: exitCode, scenarios })}\n`);
process.exit(exitCode);
