"""Verified caller identities for the end-to-end tests: JWTs checked by Envoy's `jwt_authn`, and
client certificates checked by a downstream TLS listener. No pytest in here.

- `Issuer`: an RSA key made for this run, its JWKS (inline in the bootstrap, so nothing is
  fetched) and RS256 tokens it signs, expired ones included.
- `Pki`: a CA, a server certificate for 127.0.0.1, and client certificates with a URI SAN
  (a SPIFFE ID) and a subject, written as PEM files; `client_context()` is the client side.
- `add_jwt_authn()` / `require_client_certificates()`: change a bootstrap from
  `harness.render_bootstrap()` so that `jwt_authn` runs before the wasm filter on the MCP route,
  or so that the listener speaks TLS and requires a client certificate.

Everything is generated in the test run; no key or certificate is stored in the repository.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import WASM_FILTER_NAME, _http_connection_manager

# --------------------------------------------------------------------------- JWT

JWT_AUTHN = "envoy.filters.http.jwt_authn"
JWT_PROVIDER = "e2e"
# Where jwt_authn puts the verified payload: filter_metadata["envoy.filters.http.jwt_authn"][this].
JWT_METADATA_KEY = "jwt_payload"
# The requirement the MCP route names (JwtPerRoute.requirement_name).
JWT_REQUIREMENT = "mcp"


@dataclass
class Issuer:
    """An OAuth issuer in miniature: one RSA key, its JWKS, and RS256 tokens."""

    issuer: str = "https://issuer.e2e.test"
    audience: str = "mcp-e2e"
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwks(self) -> str:
        """The JSON Web Key Set with the public key, as jwt_authn's `local_jwks` wants it."""
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, alg="RS256", use="sig")
        return json.dumps({"keys": [jwk]})

    def token(self, sub: str, *, expires_in: int = 600, **claims: Any) -> str:
        """A signed token for `sub`; a negative `expires_in` gives an expired one."""
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": self.audience, "sub": sub, "iat": now, "exp": now + expires_in, **claims}
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def add_jwt_authn(
    bootstrap: dict[str, Any],
    issuer: Issuer,
    *,
    allow_missing: bool = False,
    claim_to_headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Put `envoy.filters.http.jwt_authn` before the wasm filter, with one provider (inline
    JWKS, `payload_in_metadata: jwt_payload`, `forward: true`) and a requirement named `mcp` on
    the route. `allow_missing`: a request without a token passes (one with a bad token still
    gets jwt_authn's 401). `claim_to_headers`: claim -> request header, set from a verified token."""
    (listener,) = bootstrap["static_resources"]["listeners"]
    hcm = _http_connection_manager(listener)
    provider: dict[str, Any] = {
        "issuer": issuer.issuer,
        "audiences": [issuer.audience],
        "local_jwks": {"inline_string": issuer.jwks()},
        # The upstream sees the Authorization header too (an MCP server may want the token).
        "forward": True,
        "payload_in_metadata": JWT_METADATA_KEY,
    }
    if claim_to_headers:
        provider["claim_to_headers"] = [{"claim_name": c, "header_name": h} for c, h in claim_to_headers.items()]
    requirement: dict[str, Any] = {"provider_name": JWT_PROVIDER}
    if allow_missing:
        requirement = {"requires_any": {"requirements": [requirement, {"allow_missing": {}}]}}
    jwt_filter = {
        "name": JWT_AUTHN,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {JWT_PROVIDER: provider},
            "requirement_map": {JWT_REQUIREMENT: requirement},
        },
    }
    filters = hcm["http_filters"]
    position = next(i for i, f in enumerate(filters) if f["name"] == WASM_FILTER_NAME)
    filters.insert(position, jwt_filter)
    # The requirement is the route's: routes without it (none here) would pass unchecked.
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            route.setdefault("typed_per_filter_config", {})[JWT_AUTHN] = {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
                "requirement_name": JWT_REQUIREMENT,
            }
    return bootstrap


# --------------------------------------------------------------------------- mTLS

SPIFFE_TRUST_DOMAIN = "spiffe://example.org"


def spiffe_id(name: str) -> str:
    return f"{SPIFFE_TRUST_DOMAIN}/ns/a/sa/{name}"


@dataclass
class ClientCert:
    name: str
    uri: str
    subject: str  # RFC 4514, as Python's cryptography writes it
    cert: Path
    key: Path
    sha256: str  # hex digest of the DER certificate


class Pki:
    """A CA, a server certificate for 127.0.0.1 / localhost, and client certificates, as PEM
    files in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e2e test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(self.ca_name)
            .issuer_name(self.ca_name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca = self._write("ca.pem", self.ca_cert.public_bytes(serialization.Encoding.PEM))
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = self._issue(
            server_key,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            ExtendedKeyUsageOID.SERVER_AUTH,
        )
        self.server_cert = self._write("server.pem", server.public_bytes(serialization.Encoding.PEM))
        self.server_key = self._write("server-key.pem", _key_pem(server_key))

    def client(self, name: str, *, uri: str | None = None, common_name: str | None = None) -> ClientCert:
        """A client certificate (a new key each time) with `URI:<uri>` (default: the SPIFFE ID
        of `name`) and subject `CN=<common_name or name>,O=e2e`."""
        uri = uri if uri is not None else spiffe_id(name)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "e2e"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name or name),
            ]
        )
        cert = self._issue(key, subject, [x509.UniformResourceIdentifier(uri)], ExtendedKeyUsageOID.CLIENT_AUTH)
        file = uuid.uuid4().hex[:8]
        return ClientCert(
            name=name,
            uri=uri,
            subject=subject.rfc4514_string(),
            cert=self._write(f"client-{name}-{file}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            key=self._write(f"client-{name}-{file}-key.pem", _key_pem(key)),
            sha256=cert.fingerprint(hashes.SHA256()).hex(),
        )

    def client_context(self, client: ClientCert | None) -> ssl.SSLContext:
        """A TLS client context that trusts the CA and presents `client` (None: no certificate)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if client is not None:
            context.load_cert_chain(str(client.cert), str(client.key))
        return context

    def _issue(self, key: ec.EllipticCurvePrivateKey, subject: x509.Name, sans: list, usage) -> x509.Certificate:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False
            )
            .sign(self.ca_key, hashes.SHA256())
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def require_client_certificates(bootstrap: dict[str, Any], pki: Pki, *, forward_client_cert: bool = False) -> dict[str, Any]:
    """Make the listener TLS-only with `require_client_certificate: true`: a client without a
    certificate the CA signed does not get through the handshake. `forward_client_cert`: the
    connection manager replaces any client-sent `x-forwarded-client-cert` with the verified
    certificate's details (hash, subject, URI SAN)."""
    (listener,) = bootstrap["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(pki.server_cert)},
                        "private_key": {"filename": str(pki.server_key)},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": str(pki.ca)}},
            },
        },
    }
    if forward_client_cert:
        hcm = _http_connection_manager(listener)
        hcm["forward_client_cert_details"] = "SANITIZE_SET"
        hcm["set_current_client_cert_details"] = {"subject": True, "uri": True}
    return bootstrap
