"""`max_sessions_per_identity` through real Envoy (issue 18): two callers, one at its limit gets
429 with Retry-After and a JSON-RPC error carrying its id, the other is served; a DELETE gives a
place back at once; the count is shared by every worker."""

from __future__ import annotations

from harness import TAG_HEADER, describe, initialize, initialize_body, new_tag, open_session, request

CONFIG = {"paths": ["/mcp"], "identity_header": "x-user", "max_sessions_per_identity": 2}


def test_a_caller_at_its_limit_gets_429_another_is_served_and_a_delete_frees_a_place(envoy_for) -> None:
    envoy = envoy_for("json", CONFIG, fresh=True)
    url = envoy.url()
    alice = {"x-user": "alice", TAG_HEADER: new_tag()}
    bob = {"x-user": "bob"}
    # Fresh connections each: the sessions spread over both workers, the count is one.
    first = open_session(url, headers=alice)
    open_session(url, headers=alice)
    refused = initialize(url, headers=alice, body=initialize_body(request_id="third"))
    assert refused.status_code == 429, describe(refused)
    assert refused.headers.get("retry-after") == "60"
    assert "mcp-session-id" not in refused.headers
    error = refused.json()
    assert error["id"] == "third" and error["error"]["code"] == -32000, error
    # Another caller is served.
    open_session(url, headers=bob)
    # A DELETE gives the place back at once.
    ended = request("DELETE", url, session=first, headers=alice)
    assert ended.status_code == 204, describe(ended)
    open_session(url, headers=alice)
    again = initialize(url, headers=alice)
    assert again.status_code == 429, describe(again)
    stats = envoy.stats()
    assert stats["rejected.identity_limit"] == 2, stats
    assert stats["live"] == 3, stats
