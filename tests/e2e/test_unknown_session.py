"""Behaviour 4: unknown, ended, malformed (and, elsewhere, expired or other identity's) IDs
all get the same 404, and never reach the upstream."""

from __future__ import annotations

import secrets
import uuid

import pytest

from harness import (
    PROTOCOL_VERSION,
    TAG_HEADER,
    assert_rejection,
    describe,
    expect_stats,
    new_tag,
    open_session,
    post,
    request,
    rpc,
)

NOT_FOUND = "Session not found"


def _flip_last(session: str) -> str:
    return session[:-1] + ("0" if session[-1] != "0" else "1")


# name -> how to derive the bad ID from a valid session ID
BAD_IDS = {
    "unknown": lambda s: secrets.token_hex(20),
    "wrong secret, same slot": _flip_last,
    "wrong slot, same secret": lambda s: "7fffffff" + s[8:],
    "uppercase": lambda s: s.upper(),
    "too short": lambda s: s[:39],
    "too long": lambda s: s + "0",
    "not hex": lambda s: "z" * 40,
    "uuid": lambda s: str(uuid.uuid4()),
    "tiny": lambda s: "x",
    "visible ascii junk": lambda s: "!#$%&'*+-.^_`|~" * 3,
}


def _fingerprint(response):
    """What a client can observe of a rejection, except the date."""
    headers = tuple(sorted((k, v) for k, v in response.headers.items() if k not in ("date",)))
    return response.status_code, headers, response.content


@pytest.mark.parametrize("name", list(BAD_IDS))
def test_bad_session_id_gets_404(envoy, upstream, name: str) -> None:
    session = open_session(envoy.url())
    bad = BAD_IDS[name](session)
    tag = new_tag()
    with expect_stats(envoy, {"rejected.unknown": 1}):
        response = post(
            envoy.url(), rpc("tools/list", 1), session=bad, protocol_version=PROTOCOL_VERSION, headers={TAG_HEADER: tag}
        )
    assert_rejection(response, 404, -32001, NOT_FOUND, request_id=None)
    assert upstream.requests(tag) == []
    # The real session is untouched.
    ok = post(envoy.url(), rpc("tools/list", 2), session=session, protocol_version=PROTOCOL_VERSION)
    assert ok.status_code == 200, describe(ok)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_unknown_session_gets_404_on_get_and_delete(envoy, method: str) -> None:
    with expect_stats(envoy, {"rejected.unknown": 1}):
        response = request(method, envoy.url(), session=secrets.token_hex(20), accept="text/event-stream")
    assert_rejection(response, 404, -32001, NOT_FOUND, request_id=None)


def test_all_404s_are_indistinguishable(envoy) -> None:
    session = open_session(envoy.url())
    ended = open_session(envoy.url())
    assert request("DELETE", envoy.url(), session=ended).status_code == 204

    candidates = {name: derive(session) for name, derive in BAD_IDS.items()}
    candidates["ended"] = ended
    seen = {}
    for name, bad in candidates.items():
        response = post(envoy.url(), rpc("tools/list", 1), session=bad, protocol_version=PROTOCOL_VERSION)
        seen[name] = _fingerprint(response)
    distinct = set(seen.values())
    assert len(distinct) == 1, "\n".join(f"{k}: {v}" for k, v in seen.items())
