"""Sessions bound to a verified caller identity (issue 11): a JWT that Envoy's `jwt_authn` verified
(`identity_jwt`), or the client certificate of a downstream mTLS connection (`identity_peer`).
Real Envoy, real jwt_authn and TLS, the stateless JSON demo server behind.

Each binding runs beside the way to get it with `identity_header` alone (jwt_authn's
`claim_to_headers`; the connection manager's `x-forwarded-client-cert`), which must behave the
same where the two overlap.

The contract for a missing identity (with `identity_jwt` / `identity_peer`):
- an `initialize` without one: 401, JSON-RPC error -32000 "Unauthorized: no verified caller
  identity" with the initialize's id, stat `rejected.identity`;
- a request on a bound session without one: the unknown session's 404, byte for byte, stat
  `rejected.identity`; with another caller's identity: the same 404, stat `rejected.unknown`.

Also here, from the same issue: an empty `Mcp-Session-Id` is a missing one (400), and a
rejection echoes the request's JSON-RPC id exactly as sent (`1e400` stays `1e400`).
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sdk_client import run_sdk_session

from harness import (
    ARTIFACT,
    INITIALIZED,
    PROTOCOL_VERSION,
    SESSION_ID_RE,
    TAG_HEADER,
    Envoy,
    assert_rejection,
    describe,
    expect_stats,
    initialize_body,
    new_tag,
    post,
    render_bootstrap,
    request,
    rpc,
    stats_changes,
)
from verified_identity import (
    JWT_METADATA_KEY,
    Issuer,
    Pki,
    add_jwt_authn,
    bearer,
    require_client_certificates,
)

UNAUTHORIZED = b"Unauthorized: no verified caller identity"
MISSING = b"Bad Request: Mcp-Session-Id header is required"

# binding name -> (plugin configuration, jwt_authn claim_to_headers)
JWT_BINDINGS: dict[str, tuple[dict[str, Any], dict[str, str] | None]] = {
    "identity_jwt": ({"paths": ["/mcp"], "identity_jwt": {"metadata_key": JWT_METADATA_KEY}}, None),
    "claim_header": ({"paths": ["/mcp"], "identity_header": "x-jwt-sub"}, {"sub": "x-jwt-sub"}),
}
# binding name -> (plugin configuration, forward x-forwarded-client-cert)
PEER_BINDINGS: dict[str, tuple[dict[str, Any], bool]] = {
    "uri_san": ({"paths": ["/mcp"], "identity_peer": "uri_san"}, False),
    "subject": ({"paths": ["/mcp"], "identity_peer": "subject"}, False),
    "sha256": ({"paths": ["/mcp"], "identity_peer": "sha256"}, False),
    # Envoy's own XFCC (Hash=...;Subject=...;URI=...), replaced on every request: per certificate.
    "xfcc_header": ({"paths": ["/mcp"], "identity_header": "x-forwarded-client-cert"}, True),
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def pki(workdir) -> Pki:
    return Pki(workdir / "pki")


@pytest.fixture(scope="module", params=list(JWT_BINDINGS))
def jwt_envoy(request, envoys, upstreams, issuer) -> Iterator[Envoy]:
    """jwt_authn (token required on the MCP route) before the filter bound by `request.param`.
    The native module runs the claim_header binding, its way to a JWT's claims (README, "Native
    module"); identity_jwt it refuses at configuration."""
    if ARTIFACT == "native" and request.param == "identity_jwt":
        pytest.skip("Wasm build only: Envoy 1.40's module ABI cannot read the claims jwt_authn writes")
    config, claim_to_headers = JWT_BINDINGS[request.param]
    bootstrap = render_bootstrap(upstream_port=upstreams.get("json").port, filter_config=config)
    envoy = envoys.start(add_jwt_authn(bootstrap, issuer, claim_to_headers=claim_to_headers), f"jwt-{request.param}")
    yield envoy
    envoy.stop()


@pytest.fixture(scope="module")
def optional_jwt_envoy(envoys, upstreams, issuer) -> Iterator[Envoy]:
    """jwt_authn with `allow_missing`: a request without a token reaches the filter
    (`identity_jwt`), one with a bad token still gets jwt_authn's 401."""
    if ARTIFACT == "native":
        pytest.skip("Wasm build only: Envoy 1.40's module ABI cannot read the claims jwt_authn writes")
    config, _ = JWT_BINDINGS["identity_jwt"]
    bootstrap = render_bootstrap(upstream_port=upstreams.get("json").port, filter_config=config)
    envoy = envoys.start(add_jwt_authn(bootstrap, issuer, allow_missing=True), "jwt-allow-missing")
    yield envoy
    envoy.stop()


@pytest.fixture(scope="module", params=list(PEER_BINDINGS))
def mtls_envoy(request, envoys, upstreams, pki) -> Iterator[Envoy]:
    """A TLS listener that requires a client certificate, the filter bound by `request.param`."""
    config, forward = PEER_BINDINGS[request.param]
    bootstrap = render_bootstrap(upstream_port=upstreams.get("json").port, filter_config=config)
    envoy = envoys.start(require_client_certificates(bootstrap, pki, forward_client_cert=forward), f"mtls-{request.param}")
    envoy.binding = request.param  # type: ignore[attr-defined]
    yield envoy
    envoy.stop()


# --------------------------------------------------------------------------- helpers


def _observable(response: httpx.Response) -> tuple[int, str | None, bytes]:
    return response.status_code, response.headers.get("content-type"), response.content


def _open(url: str, **kwargs: Any) -> str:
    """initialize + notifications/initialized with the caller's credentials: the session ID."""
    response = post(url, initialize_body(), **kwargs)
    assert response.status_code == 200, describe(response)
    session = response.headers.get("mcp-session-id")
    assert session is not None and SESSION_ID_RE.match(session), describe(response)
    ack = post(url, INITIALIZED, session=session, protocol_version=PROTOCOL_VERSION, **kwargs)
    assert ack.status_code == 202, describe(ack)
    return session


def _list(url: str, session: str, **kwargs: Any) -> httpx.Response:
    return post(url, rpc("tools/list", 1), session=session, protocol_version=PROTOCOL_VERSION, **kwargs)


def _assert_jwt_authn_rejection(response: httpx.Response, reason: str, status: int = 401) -> None:
    """jwt_authn's own answer (Envoy rejects before the wasm filter runs)."""
    info = describe(response)
    assert response.status_code == status, info
    assert response.headers.get("www-authenticate", "").startswith("Bearer"), info
    assert reason in response.text, info
    assert "jsonrpc" not in response.text, info


# --------------------------------------------------------------------------- JWT


def test_jwt_owner_keeps_the_session_across_tokens(jwt_envoy, issuer) -> None:
    """Bound to the verified claims, not to the token: a fresh token for alice works too."""
    url = jwt_envoy.url()
    session = _open(url, headers=bearer(issuer.token("alice")))
    for _ in range(3):
        response = _list(url, session, headers=bearer(issuer.token("alice")))
        assert response.status_code == 200, describe(response)


def test_jwt_other_caller_gets_the_unknown_session_404(jwt_envoy, issuer, upstream) -> None:
    url = jwt_envoy.url()
    session = _open(url, headers=bearer(issuer.token("alice")))
    unknown = _list(url, secrets.token_hex(20), headers=bearer(issuer.token("alice")))
    assert_rejection(unknown, 404, -32001, "Session not found")
    tag = new_tag()
    with expect_stats(jwt_envoy, {"rejected.unknown": 1}):
        response = _list(url, session, headers={**bearer(issuer.token("bob")), TAG_HEADER: tag})
    assert _observable(response) == _observable(unknown), describe(response)
    assert upstream.requests(tag) == []
    assert _list(url, session, headers=bearer(issuer.token("alice"))).status_code == 200


def test_jwt_a_client_header_cannot_claim_another_identity(jwt_envoy, issuer) -> None:
    """bob's token with `x-jwt-sub: alice` (the header the claim_header binding reads): jwt_authn
    replaces the header with the verified claim, and identity_jwt never reads headers."""
    url = jwt_envoy.url()
    session = _open(url, headers=bearer(issuer.token("alice")))
    with expect_stats(jwt_envoy, {"rejected.unknown": 1}):
        response = _list(url, session, headers={**bearer(issuer.token("bob")), "x-jwt-sub": "alice"})
    assert_rejection(response, 404, -32001, "Session not found")


def test_jwt_other_caller_cannot_delete(jwt_envoy, issuer) -> None:
    url = jwt_envoy.url()
    session = _open(url, headers=bearer(issuer.token("alice")))
    response = request("DELETE", url, session=session, headers=bearer(issuer.token("bob")))
    assert_rejection(response, 404, -32001, "Session not found")
    assert _list(url, session, headers=bearer(issuer.token("alice"))).status_code == 200


def test_jwt_missing_token_gets_jwt_authns_401(jwt_envoy, issuer) -> None:
    url = jwt_envoy.url()
    session = _open(url, headers=bearer(issuer.token("alice")))
    with expect_stats(jwt_envoy, {}):
        _assert_jwt_authn_rejection(post(url, initialize_body()), "Jwt is missing")
        _assert_jwt_authn_rejection(_list(url, session), "Jwt is missing")


# jwt_authn allows 60 s of clock skew by default: an expired token is one past that.
EXPIRED = -600


@pytest.mark.parametrize(
    ("token", "status", "reason"),
    [
        (lambda issuer: issuer.token("alice", expires_in=EXPIRED), 401, "Jwt is expired"),
        (lambda issuer: Issuer(kid=issuer.kid).token("alice"), 401, "Jwt verification fails"),
        # A valid token for another audience: jwt_authn answers 403, not 401.
        (lambda issuer: issuer.token("alice", aud="someone-else"), 403, "Audiences in Jwt are not allowed"),
    ],
    ids=["expired", "wrong-key", "wrong-audience"],
)
def test_jwt_bad_token_gets_jwt_authns_answer(jwt_envoy, issuer, token, status, reason) -> None:
    url = jwt_envoy.url()
    session = _open(url, headers=bearer(issuer.token("alice")))
    with expect_stats(jwt_envoy, {}):
        _assert_jwt_authn_rejection(post(url, initialize_body(), headers=bearer(token(issuer))), reason, status)
        _assert_jwt_authn_rejection(_list(url, session, headers=bearer(token(issuer))), reason, status)


def test_jwt_sdk_client_with_a_bearer_token(jwt_envoy, issuer, upstream) -> None:
    """The official Python SDK client (handshake mode) with `Authorization: Bearer` on every
    request: initialize, list tools, call a tool, close (DELETE)."""
    tag = new_tag()
    before = jwt_envoy.stats()

    version = run_sdk_session(jwt_envoy.url(), tag, "legacy", bearer(issuer.token("alice")))
    assert version == PROTOCOL_VERSION
    changes = stats_changes(before, jwt_envoy.stats())
    rejected = {k for k in changes if k.startswith("rejected.")}
    # After the DELETE, the client's GET stream may try once more and meet its 404.
    assert rejected <= {"rejected.unknown"}, changes
    assert {k: v for k, v in changes.items() if k not in rejected} == {"created": 1, "terminated": 1}, changes
    seen = upstream.requests(tag)
    assert seen and all(r["headers"].get("authorization", "").startswith("Bearer ") for r in seen), seen


# --------------------------------------------------------------------------- JWT optional


def test_initialize_without_identity_gets_401(optional_jwt_envoy, upstream) -> None:
    tag = new_tag()
    with expect_stats(optional_jwt_envoy, {"rejected.identity": 1}):
        response = post(optional_jwt_envoy.url(), initialize_body(7), headers={TAG_HEADER: tag})
    assert_rejection(response, 401, -32000, UNAUTHORIZED.decode(), request_id=7)
    assert response.content == b'{"jsonrpc":"2.0","error":{"code":-32000,"message":"' + UNAUTHORIZED + b'"},"id":7}'
    # The filter tells an initialize by its body, and lets a sessionless POST's headers go on
    # before the body is read (docs/OPERATIONS.md, `allow_on_headers_stop_iteration`): the
    # upstream may see the headers and a reset, never the body, and answers nothing that passes.
    for seen in upstream.requests(tag):
        assert seen["body"] == "" and seen["status"] != 200, seen


def test_initialize_without_identity_echoes_a_huge_id(optional_jwt_envoy) -> None:
    raw = b"1e400"
    content = b'{"jsonrpc":"2.0","id":' + raw + b',"method":"initialize","params":{"protocolVersion":"2025-11-25",' \
              b'"capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}'
    with expect_stats(optional_jwt_envoy, {"rejected.identity": 1}):
        response = post(optional_jwt_envoy.url(), content=content)
    assert response.status_code == 401, describe(response)
    assert response.content == b'{"jsonrpc":"2.0","error":{"code":-32000,"message":"' + UNAUTHORIZED + b'"},"id":' + raw + b"}"


def test_session_request_without_identity_gets_the_unknown_session_404(optional_jwt_envoy, issuer) -> None:
    url = optional_jwt_envoy.url()
    session = _open(url, headers=bearer(issuer.token("alice")))
    unknown = _list(url, secrets.token_hex(20), headers=bearer(issuer.token("alice")))
    with expect_stats(optional_jwt_envoy, {"rejected.identity": 1}):
        response = _list(url, session)
    assert _observable(response) == _observable(unknown), describe(response)
    with expect_stats(optional_jwt_envoy, {"rejected.identity": 1}):
        deleted = request("DELETE", url, session=session)
    assert _observable(deleted) == _observable(unknown), describe(deleted)
    with expect_stats(optional_jwt_envoy, {"rejected.unknown": 1}):
        other = _list(url, session, headers=bearer(issuer.token("bob")))
    assert _observable(other) == _observable(unknown), describe(other)
    assert _list(url, session, headers=bearer(issuer.token("alice"))).status_code == 200


def test_allow_missing_still_refuses_a_bad_token(optional_jwt_envoy, issuer) -> None:
    with expect_stats(optional_jwt_envoy, {}):
        response = post(optional_jwt_envoy.url(), initialize_body(), headers=bearer(issuer.token("alice", expires_in=EXPIRED)))
    _assert_jwt_authn_rejection(response, "Jwt is expired")


# --------------------------------------------------------------------------- mTLS


def _https(envoy: Envoy) -> str:
    return f"https://127.0.0.1:{envoy.port}/mcp"


def test_mtls_owner_keeps_the_session(mtls_envoy, pki) -> None:
    alice = pki.client_context(pki.client("alice"))
    session = _open(_https(mtls_envoy), verify=alice)
    for _ in range(3):
        response = _list(_https(mtls_envoy), session, verify=alice)
        assert response.status_code == 200, describe(response)


def test_mtls_other_certificate_gets_the_unknown_session_404(mtls_envoy, pki, upstream) -> None:
    url = _https(mtls_envoy)
    alice = pki.client_context(pki.client("alice"))
    bob = pki.client_context(pki.client("bob"))
    session = _open(url, verify=alice)
    unknown = _list(url, secrets.token_hex(20), verify=alice)
    assert_rejection(unknown, 404, -32001, "Session not found")
    tag = new_tag()
    with expect_stats(mtls_envoy, {"rejected.unknown": 1}):
        response = _list(url, session, verify=bob, headers={TAG_HEADER: tag})
    assert _observable(response) == _observable(unknown), describe(response)
    assert upstream.requests(tag) == []
    deleted = request("DELETE", url, session=session, verify=bob)
    assert _observable(deleted) == _observable(unknown), describe(deleted)
    assert _list(url, session, verify=alice).status_code == 200


def test_mtls_new_certificate_for_the_same_identity(mtls_envoy, pki) -> None:
    """A second certificate for alice (new key, same URI SAN, same subject): the same caller
    for `uri_san` and `subject`, another one for `sha256` and the XFCC header (which carries
    the certificate's hash)."""
    url = _https(mtls_envoy)
    session = _open(url, verify=pki.client_context(pki.client("alice")))
    renewed = _list(url, session, verify=pki.client_context(pki.client("alice")))
    same_caller = mtls_envoy.binding in ("uri_san", "subject")
    assert renewed.status_code == (200 if same_caller else 404), describe(renewed)


def test_mtls_without_a_client_certificate_no_request_gets_through(mtls_envoy, pki) -> None:
    with expect_stats(mtls_envoy, {}):
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            post(_https(mtls_envoy), initialize_body(), verify=pki.client_context(None))


# --------------------------------------------------------------------------- empty header, ids


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
def test_an_empty_session_header_is_a_missing_one(envoy, upstream, method: str) -> None:
    tag = new_tag()
    body = rpc("tools/list", 1) if method == "POST" else None
    with expect_stats(envoy, {"rejected.missing": 1}):
        response = request(method, envoy.url(), body=body, session="", headers={TAG_HEADER: tag},
                           protocol_version=PROTOCOL_VERSION)
    # Like a missing header: a POST's body is read (it could be an initialize), so its id is
    # echoed; a GET or DELETE has none.
    assert_rejection(response, 400, -32000, MISSING.decode(), request_id=1 if method == "POST" else None)
    if method != "POST":
        assert upstream.requests(tag) == []


@pytest.mark.parametrize(
    "raw_id",
    [b"7", b"1e400", b"123456789012345678901234567890", b"0.1000000000000000055511151231257827"],
)
def test_a_rejection_echoes_the_id_as_sent(envoy, raw_id: bytes) -> None:
    """A sessionless POST that is not an initialize: 400 missing, its id copied byte for byte
    (a number a float or an integer cannot hold stays as it was sent)."""
    content = b'{"jsonrpc":"2.0","id":' + raw_id + b',"method":"tools/list"}'
    with expect_stats(envoy, {"rejected.missing": 1}):
        response = post(envoy.url(), content=content)
    assert response.status_code == 400, describe(response)
    assert response.content == b'{"jsonrpc":"2.0","error":{"code":-32000,"message":"' + MISSING + b'"},"id":' + raw_id + b"}", describe(response)
