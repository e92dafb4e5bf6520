"""Long-lived SSE streams through Envoy with the shipped configuration shape.

Envoy ends a response that is still streaming after the route timeout (15 s by default);
`envoy/envoy.yaml` turns it off (`timeout: 0s`) and sets `stream_idle_timeout: 3600s`, and the
harness renders every test's Envoy from that file. On one session of the stateful SSE demo
server, through the filter, at the same time:

- a GET stream (server-to-client messages) stays open past 15 s, gets the server's keep-alive
  ping comment (at 15 s), and ends cleanly when the session is DELETEd after the tool call;
- a POST answered with SSE (`tools/call sleep` for LONG seconds, a progress notification about
  every 0.1 s) streams progress past 15 s and ends with its result.

The control runs the same streams, at the same time, through an Envoy rendered from the same
file with the route's `timeout` removed (Envoy's default): there both are cut at 15 s. It shows
that LONG is past the limit the shipped configuration removes.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from harness import (
    ACCEPT_BOTH,
    PROTOCOL_VERSION,
    REFERENCE_CONFIG,
    Envoy,
    log_problems,
    open_session,
    plugin_configuration,
    render_bootstrap,
    request,
    sse_events,
    stats_changes,
    tool_call,
)

DEFAULT_ROUTE_TIMEOUT = 15.0  # Envoy's, when a route sets none
LONG = 16.5  # how long the tool call streams: past the default route timeout
KIND = "stateful-sse"


def _route(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (listener,) = bootstrap["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    (route,) = vhost["routes"]
    return route["route"]


def _hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (listener,) = bootstrap["static_resources"]["listeners"]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


@dataclass
class Stream:
    """What a client saw of one streaming response, with times relative to the test's start."""

    status: int | None = None
    content_type: str = ""
    opened_at: float | None = None  # response headers received
    lines: list[tuple[float, str]] = field(default_factory=list)
    ended_at: float | None = None
    error: str | None = None  # how it ended, when not cleanly
    opened: anyio.Event = field(default_factory=anyio.Event)  # set at opened_at, or at the end
    ended: anyio.Event = field(default_factory=anyio.Event)

    def events(self) -> list[dict[str, str]]:
        return list(sse_events("\n".join(line for _, line in self.lines) + "\n\n"))

    def describe(self) -> str:
        shown = self.lines if len(self.lines) <= 12 else self.lines[:6] + [(0.0, "...")] + self.lines[-6:]
        body = "\n".join(f"  {t:7.3f}s {line[:160]}" for t, line in shown)
        return (
            f"status {self.status} {self.content_type}, opened {self.opened_at}, ended {self.ended_at}, "
            f"error {self.error}, {len(self.lines)} lines\n{body}"
        )


@dataclass
class Run:
    session: str
    get: Stream
    post: Stream
    post_done_at: float | None = None
    delete_sent_at: float | None = None
    delete_status: int | None = None
    stats: dict[str, int] = field(default_factory=dict)  # the filter's stat changes
    timeouts: dict[str, int] = field(default_factory=dict)  # Envoy's timeout counters, changes
    log_problems: list[str] = field(default_factory=list)  # the control Envoy's (not pooled)


async def _stream(client: httpx.AsyncClient, t0: float, out: Stream, method: str, url: str, **kwargs: Any) -> None:
    try:
        async with client.stream(method, url, **kwargs) as response:
            out.status = response.status_code
            out.content_type = response.headers.get("content-type", "")
            out.opened_at = time.monotonic() - t0
            out.opened.set()
            async for line in response.aiter_lines():
                out.lines.append((time.monotonic() - t0, line))
    except httpx.HTTPError as e:
        out.error = f"{type(e).__name__}: {e}"
    finally:
        out.ended_at = time.monotonic() - t0
        out.opened.set()
        out.ended.set()


def _timeout_counters(envoy: Envoy) -> dict[str, int]:
    return envoy.server_stats("rq_timeout")


async def _exercise(envoy: Envoy, t0: float) -> Run:
    """GET stream and a LONG SSE tool call on one session, at once; then DELETE the session."""
    url = envoy.url()
    session = await anyio.to_thread.run_sync(open_session, url)
    run = Run(session=session, get=Stream(), post=Stream())
    headers = {"mcp-session-id": session, "mcp-protocol-version": PROTOCOL_VERSION}
    stats_before = await anyio.to_thread.run_sync(envoy.stats)
    timeouts_before = await anyio.to_thread.run_sync(_timeout_counters, envoy)
    timeout = httpx.Timeout(10, read=LONG + 15)
    async with (
        httpx.AsyncClient(timeout=timeout) as get_client,
        httpx.AsyncClient(timeout=timeout) as post_client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(
            lambda: _stream(get_client, t0, run.get, "GET", url, headers={**headers, "accept": "text/event-stream"})
        )
        # The POST starts once the GET stream is open (its headers came), so the GET is open at
        # least as long as the tool call streams.
        with anyio.fail_after(15):
            await run.get.opened.wait()
        body = tool_call("sleep", {"seconds": LONG}, request_id=7, progressToken="long")
        await _stream(
            post_client,
            t0,
            run.post,
            "POST",
            url,
            json=body,
            headers={**headers, "accept": ACCEPT_BOTH},
        )
        run.post_done_at = time.monotonic() - t0
        run.delete_sent_at = time.monotonic() - t0
        deleted = await anyio.to_thread.run_sync(lambda: request("DELETE", url, session=session))
        run.delete_status = deleted.status_code
        # The GET ends by itself after the DELETE (the upstream closes it), or was cut earlier.
        with anyio.fail_after(15):
            await run.get.ended.wait()
    run.stats = stats_changes(stats_before, await anyio.to_thread.run_sync(envoy.stats))
    run.timeouts = stats_changes(timeouts_before, await anyio.to_thread.run_sync(_timeout_counters, envoy))
    return run


def shipped_plugin_config() -> dict[str, Any]:
    """The plugin configuration of envoy/envoy.yaml."""
    return json.loads(plugin_configuration(render_bootstrap(upstream_port=0)) or "{}")


@pytest.fixture(scope="module")
def long_streams(envoys, upstreams, workdir: Path) -> dict[str, Run]:
    """Both runs, concurrently: `shipped` through an Envoy rendered from envoy/envoy.yaml with
    its plugin configuration, `control` through the same without the route's timeout."""
    shipped = envoys.get(upstreams.get(KIND), shipped_plugin_config())
    bootstrap = copy.deepcopy(shipped.bootstrap)
    del _route(bootstrap)["timeout"]
    control = Envoy(bootstrap, workdir, name="envoy-default-route-timeout").start()
    runs: dict[str, Run] = {}

    async def main() -> None:
        t0 = time.monotonic()

        async def one(name: str, envoy: Envoy) -> None:
            runs[name] = await _exercise(envoy, t0)

        with anyio.fail_after(LONG + 40):
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "shipped", shipped)
                tg.start_soon(one, "control", control)

    try:
        anyio.run(main)
    finally:
        control.stop()
    runs["control"].log_problems = log_problems(control.log_text())
    return runs


def test_the_shipped_config_turns_the_route_timeout_off() -> None:
    bootstrap = render_bootstrap(upstream_port=8000)
    assert _route(bootstrap)["timeout"] in ("0s", 0), _route(bootstrap)
    assert _hcm(bootstrap)["stream_idle_timeout"] == "3600s", _hcm(bootstrap)
    assert REFERENCE_CONFIG.name == "envoy.yaml"  # what render_bootstrap reads


def test_get_stream_stays_open_past_the_default_route_timeout(long_streams) -> None:
    run = long_streams["shipped"]
    get = run.get
    info = f"GET: {get.describe()}\nPOST done at {run.post_done_at}, DELETE at {run.delete_sent_at}"
    assert get.status == 200 and get.content_type.startswith("text/event-stream"), info
    assert get.error is None, info  # ended cleanly, not reset
    # Open for the whole tool call (> LONG s), ended only by the DELETE.
    assert run.post_done_at is not None and run.post_done_at - get.opened_at > DEFAULT_ROUTE_TIMEOUT, info
    assert get.ended_at >= run.delete_sent_at, info
    assert run.delete_status == 200, info  # the stateful upstream's answer, forwarded
    # The upstream's keep-alive ping (sent 15 s after the stream opened) came through; nothing
    # else was sent on it.
    assert any(line.startswith(": ping") for _, line in get.lines), info
    assert [e for e in get.events() if e.get("data")] == [], info
    assert run.timeouts == {}, run.timeouts
    assert run.stats == {"terminated": 1, "live": -1}, run.stats


def test_post_answered_with_sse_streams_past_the_default_route_timeout(long_streams) -> None:
    run = long_streams["shipped"]
    post = run.post
    info = f"POST: {post.describe()}"
    assert post.status == 200 and post.content_type.startswith("text/event-stream"), info
    assert post.error is None, info
    messages = [json.loads(e["data"]) for e in post.events() if e.get("data")]
    progress = [m["params"] for m in messages if m.get("method") == "notifications/progress"]
    results = [m for m in messages if "result" in m or "error" in m]
    assert len(results) == 1 and results[0]["id"] == 7, info
    assert results[0]["result"]["isError"] is False, info
    assert results[0]["result"]["content"][0]["text"] == f"slept {LONG:g}s", info
    assert messages[-1] is results[0], info  # the result is the last message
    # Progress kept coming through past 15 s, in order.
    assert all(p["progressToken"] == "long" for p in progress), info
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and values[-1] > DEFAULT_ROUTE_TIMEOUT, info
    late = [t for t, line in post.lines if line.startswith("data:") and t > post.opened_at + DEFAULT_ROUTE_TIMEOUT]
    assert late, info
    # Open past the route timeout, as the client saw it. Not "> LONG": the server counts its
    # LONG seconds from before it sent the first event, and the client's clock starts when
    # that event arrives, so a first event delivered later than the last (a loaded machine:
    # 16.49997 s seen once) makes the client's interval a little shorter than LONG. The server's
    # own count is checked above (its last progress past 15 s, its "slept 16.5s" result).
    assert post.ended_at - post.opened_at > DEFAULT_ROUTE_TIMEOUT, info


def test_control_envoy_default_route_timeout_cuts_both_streams(long_streams) -> None:
    """Without `timeout: 0s` on the route, Envoy (same version, same file otherwise) cuts both
    streams at 15 s: the times above are past a limit that really applies."""
    run = long_streams["control"]
    info = f"GET: {run.get.describe()}\nPOST: {run.post.describe()}\ntimeouts: {run.timeouts}"
    assert run.log_problems == [], info
    # Envoy's route timeout fired for both requests...
    assert sum(v for k, v in run.timeouts.items() if k.endswith("upstream_rq_timeout")) == 2, info
    for stream in (run.get, run.post):
        assert stream.status == 200, info
        # ...and reset them mid-body (the client sees the close after Envoy's 1 s delayed-close
        # timeout), not before 15 s.
        assert stream.error is not None, info
        assert stream.ended_at - stream.opened_at >= DEFAULT_ROUTE_TIMEOUT - 0.5, info
    messages = [json.loads(e["data"]) for e in run.post.events() if e.get("data")]
    assert messages and not any("result" in m for m in messages), info  # the tool's answer never came
