"""Session facts in a real access log (issue 18): every request the filter handled names its
session by a handle (a digest of the ID, never the ID), the caller by an identity handle, and
what the filter did; no line of the log holds a session ID. Through the access log of the
shipped envoy/envoy.yaml, which prints the facts."""

from __future__ import annotations

import hashlib
import re
import time

from harness import (
    INITIALIZED,
    MODERN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    TAG_HEADER,
    new_tag,
    open_session,
    post,
    request,
    rpc,
)

CONFIG = {"paths": ["/mcp"], "session_facts": True, "identity_header": "x-user"}
LINE_RE = re.compile(
    r'"(?P<method>\S+) (?P<path>\S+)" (?P<status>\d+) session=(?P<session>\S+) '
    r"identity=(?P<identity>\S+) outcome=(?P<outcome>\S+)$"
)


def handle_of(session_id: str) -> str:
    """As the filter computes it: 64 bits of SHA-256 over the ID, in hex."""
    return hashlib.sha256(b"mcp-session-id\0" + session_id.encode()).hexdigest()[:16]


def identity_handle(value: bytes) -> str:
    return hashlib.sha256(b"mcp-identity\0\x01" + value).hexdigest()[:16]


def access_lines(envoy, since: int) -> list[dict[str, str]]:
    lines = []
    for line in envoy.log_text()[since:].splitlines():
        match = LINE_RE.search(line)
        if match:
            lines.append(match.groupdict())
    return lines


def wait_for_lines(envoy, since: int, count: int) -> list[dict[str, str]]:
    """Envoy flushes its access log on a timer: wait until the lines are there."""
    deadline = time.monotonic() + 15
    while True:
        lines = access_lines(envoy, since)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_every_request_carries_its_session_handle_identity_and_outcome(envoy_for) -> None:
    envoy = envoy_for("json", CONFIG, fresh=True)
    url = envoy.url()
    alice = {"x-user": "alice", TAG_HEADER: new_tag()}
    since = len(envoy.log_text())
    session = open_session(url, headers=alice, initialized=False)
    # Refused for its body, after the session was found: the outcome says so in both builds
    # (a fact written twice kept its first value, `passed`, in the native one).
    early = post(url, rpc("tools/list", 1), session=session, protocol_version=PROTOCOL_VERSION, headers=alice)
    assert early.status_code == 400
    initialized = post(url, INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION, headers=alice)
    assert initialized.status_code == 202
    call = post(url, rpc("tools/list", 2), session=session, protocol_version=PROTOCOL_VERSION, headers=alice)
    assert call.status_code == 200
    unknown = "00000001" + "ab" * 16
    refused = post(url, rpc("tools/list", 3), session=unknown, protocol_version=PROTOCOL_VERSION, headers=alice)
    assert refused.status_code == 404
    missing = post(url, rpc("tools/list", 4), protocol_version=PROTOCOL_VERSION, headers=alice)
    assert missing.status_code == 400
    era = post(url, rpc("tools/list", 5), protocol_version=MODERN_PROTOCOL_VERSION)
    assert era.status_code < 500
    ended = request("DELETE", url, session=session, headers=alice)
    assert ended.status_code == 204

    lines = wait_for_lines(envoy, since, 8)
    assert len(lines) == 8, envoy.log_tail(30)
    who = identity_handle(b"alice")
    mine = handle_of(session)
    got = [(line["status"], line["session"], line["identity"], line["outcome"]) for line in lines]
    assert got == [
        ("200", mine, who, "minted"),
        ("400", mine, who, "rejected.lifecycle"),
        ("202", mine, who, "passed"),
        ("200", mine, who, "passed"),
        ("404", handle_of(unknown), who, "rejected.unknown"),
        ("400", "-", who, "rejected.missing"),  # its body was read: the caller is known
        (str(era.status_code), "-", "-", "sessionless"),
        ("204", mine, who, "ended"),
    ]
    # The log names sessions, never holds one.
    text = envoy.log_text()
    assert session not in text
