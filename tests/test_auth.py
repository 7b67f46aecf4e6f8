"""Every way a token can be wrong (RFC 8725), tokens in query strings, and tenancy.

Each failure goes through a real route (``GET /events``) and must answer
``401 {"error":{"code":"unauthorized"}}`` with ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request

from app.errors import Unauthorized
from app.security.auth import TokenVerifier, extract_token, mint_token
from core import settings
from core.logs import JSONFormatter
from tests.support.asgi import StreamCall as _StreamCall
from tests.support.asgi import running_app, token

pytestmark = pytest.mark.anyio

SECRET = str(settings.JWT_SECRET)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"sub": "mallory", "iat": now, "exp": now + 3600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_signed(
    header: dict[str, Any], payload: dict[str, Any], key: bytes, digest: Any = hashlib.sha256
) -> str:
    # Built by hand: PyJWT itself refuses to HMAC-sign with a PEM key, which is the
    # point of the HS/RS confusion attack (RFC 8725 section 2.1).
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = hmac.new(key, signing_input.encode(), digest).digest()
    return signing_input + "." + b64(sig)


def tampered() -> str:
    head, _, sig = jwt.encode(claims(sub="alice"), SECRET, algorithm="HS256").split(".")
    return head + "." + b64(json.dumps(claims(sub="admin")).encode()) + "." + sig


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = RSA_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)

BAD_TOKENS = {
    "alg_none": lambda: jwt.encode(claims(), None, algorithm="none"),
    "alg_none_no_signature_dot": lambda: jwt.encode(claims(), None, algorithm="none").rstrip("."),
    # Hand-signed: PyJWT warns (an error under pytest) that the test secret is short
    # for SHA-512; the server must refuse HS512 whatever the key.
    "wrong_algorithm_hs512": lambda: hand_signed(
        {"alg": "HS512", "typ": "JWT"}, claims(), SECRET.encode(), hashlib.sha512
    ),
    "wrong_algorithm_rs256": lambda: jwt.encode(
        claims(), RSA_PEM, algorithm="RS256", headers={"kid": "k1"}
    ),
    "wrong_key": lambda: jwt.encode(claims(), "another-secret-of-32-bytes-or-more!!", "HS256"),
    "expired": lambda: jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256"),
    "missing_exp": lambda: jwt.encode(claims(exp=None), SECRET, algorithm="HS256"),
    "missing_sub": lambda: jwt.encode(claims(sub=None), SECRET, algorithm="HS256"),
    "empty_sub": lambda: jwt.encode(claims(sub=""), SECRET, algorithm="HS256"),
    "non_string_sub": lambda: jwt.encode(claims(sub=42), SECRET, algorithm="HS256"),
    "non_string_org": lambda: jwt.encode(claims(org=["acme"]), SECRET, algorithm="HS256"),
    "empty_org": lambda: jwt.encode(claims(org=""), SECRET, algorithm="HS256"),
    "non_numeric_exp": lambda: jwt.encode(claims(exp="tomorrow"), SECRET, algorithm="HS256"),
    "malformed": lambda: "not.a.jwt",
    "malformed_two_parts": lambda: "eyJhbGciOiJIUzI1NiJ9.e30",
    "garbage_base64": lambda: "%%%.%%%.%%%",
    "oversized": lambda: jwt.encode(claims(pad="x" * 9000), SECRET, algorithm="HS256"),
    "tampered_payload": tampered,
    "hs256_signed_with_rsa_public_pem": lambda: hand_signed(
        {"alg": "HS256", "typ": "JWT"}, claims(), RSA_PUBLIC_PEM
    ),
    # Validly signed, but nothing Herald can key data by (issue 11 item 6).
    "exp_2_pow_1024": lambda: jwt.encode(claims(exp=2**1024), SECRET, algorithm="HS256"),
    "exp_1e400": lambda: hand_signed_raw(b'{"sub":"m","exp":1e400}'),
    "iat_minus_2_pow_1024": lambda: jwt.encode(claims(iat=-(2**1024)), SECRET, "HS256"),
    "nul_in_sub": lambda: jwt.encode(claims(sub="a\x00b"), SECRET, algorithm="HS256"),
    "newline_in_org": lambda: jwt.encode(claims(org="acme\nx"), SECRET, algorithm="HS256"),
    "sub_too_long": lambda: jwt.encode(claims(sub="s" * 256), SECRET, algorithm="HS256"),
    "org_too_long": lambda: jwt.encode(claims(org="o" * 256), SECRET, algorithm="HS256"),
    "roles_not_a_list": lambda: jwt.encode(claims(roles={"admin": 1}), SECRET, "HS256"),
    # Over JWT_MAX_LIFETIME_SECONDS (7 days), with and without iat.
    "lives_too_long": lambda: jwt.encode(
        claims(exp=int(time.time()) + 8 * 86400), SECRET, algorithm="HS256"
    ),
    "lives_too_long_no_iat": lambda: jwt.encode(
        claims(exp=int(time.time()) + 8 * 86400, iat=None), SECRET, algorithm="HS256"
    ),
}


def hand_signed_raw(payload: bytes) -> str:
    """HS256 over a payload given as raw JSON text (e.g. numbers json.dumps cannot write)."""
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload)
    sig = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


def StreamCall(app: Starlette, path: str, headers: dict[str, str] | None = None) -> _StreamCall:
    # Each request from its own address: the failed-auth throttle (app/security/throttle.py)
    # counts per address, and these tests fail on purpose many times a minute.
    call = _StreamCall(app, path, headers)
    call.scope["client"] = (f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.1", 1)
    return call


def assert_unauthorized(call: _StreamCall) -> None:
    assert call.status == 401, bytes(call.body)
    assert call.headers["www-authenticate"].startswith("Bearer")
    assert json.loads(bytes(call.body))["error"]["code"] == "unauthorized"


async def get_events(
    app: Starlette, bearer: str | None = None, path: str = "/events"
) -> _StreamCall:
    headers = {"authorization": f"Bearer {bearer}"} if bearer is not None else {}
    call = StreamCall(app, path, headers)
    with anyio.fail_after(5):
        await call.run()
    return call


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
async def test_bad_token_in_header(name: str) -> None:
    async with running_app() as app:
        assert_unauthorized(await get_events(app, BAD_TOKENS[name]()))


@pytest.mark.parametrize("name", ["alg_none", "expired", "wrong_key", "tampered_payload"])
async def test_bad_token_in_cookie_and_query(name: str) -> None:
    bad = BAD_TOKENS[name]()
    async with running_app() as app:
        call = StreamCall(app, "/events", {"cookie": f"herald_token={bad}"})
        with anyio.fail_after(5):
            await call.run()
        assert_unauthorized(call)
        assert_unauthorized(await get_events(app, path=f"/events?token={bad}"))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer "},
        {"authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"},
        {"authorization": "Bearer"},
        {"cookie": "herald_token="},
    ],
)
async def test_missing_or_wrong_scheme(headers: dict[str, str]) -> None:
    async with running_app() as app:
        call = StreamCall(app, "/events", headers)
        with anyio.fail_after(5):
            await call.run()
        assert_unauthorized(call)


async def test_good_token_in_cookie_is_accepted() -> None:
    async with running_app() as app:
        call = StreamCall(app, "/events", {"cookie": f"herald_token={token('c', ttl=1)}"})
        with anyio.fail_after(5):
            await call.run()
    assert call.status == 200
    assert b"event: token_expired" in call.body


def test_algorithm_none_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="none"):
        TokenVerifier(secret=SECRET, algorithms=["HS256", "none"])


async def test_audience_and_issuer_when_configured() -> None:
    verifier = TokenVerifier(
        secret=SECRET, algorithms=["HS256"], audience="herald-api", issuer="https://id.example"
    )
    good = claims(aud="herald-api", iss="https://id.example")
    cases = {
        "wrong_aud": claims(aud="someone-else", iss="https://id.example"),
        "missing_aud": claims(iss="https://id.example"),
        "wrong_iss": claims(aud="herald-api", iss="https://evil.example"),
        "missing_iss": claims(aud="herald-api"),
    }
    async with running_app() as app:
        app.state.verifier = verifier
        for name, payload in cases.items():
            call = await get_events(app, jwt.encode(payload, SECRET, algorithm="HS256"))
            assert_unauthorized(call), name
        ok = StreamCall(
            app,
            "/events",
            {
                "authorization": "Bearer "
                + jwt.encode({**good, "exp": int(time.time()) + 1}, SECRET, algorithm="HS256")
            },
        )
        with anyio.fail_after(5):
            await ok.run()
        assert ok.status == 200


@contextlib.contextmanager
def jwks_server(document: dict[str, Any]) -> Iterator[str]:
    """A real loopback HTTP server answering the JWKS document, for PyJWKClient."""
    body = json.dumps(document).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def jwks_document() -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    return {"keys": [jwk]}


async def test_jwks_rs256_and_the_confusion_attack() -> None:
    with jwks_server(jwks_document()) as url:
        rs_only = TokenVerifier(secret="", algorithms=["RS256"], jwks_url=url)
        mixed = TokenVerifier(secret=SECRET, algorithms=["HS256", "RS256"], jwks_url=url)
        for verifier in (rs_only, mixed):
            good = jwt.encode(
                {**claims(sub="rsa-user"), "exp": int(time.time()) + 1},
                RSA_PEM,
                algorithm="RS256",
                headers={"kid": "k1"},
            )
            principal = await verifier.verify(good)
            assert principal.user_id == "rsa-user"
            async with running_app() as app:
                app.state.verifier = verifier
                ok = StreamCall(app, "/events", {"authorization": f"Bearer {good}"})
                with anyio.fail_after(5):
                    await ok.run()
                assert ok.status == 200
                bad = [
                    # HS256 keyed with the public key the attacker downloaded from the JWKS.
                    hand_signed({"alg": "HS256", "kid": "k1"}, claims(), RSA_PUBLIC_PEM),
                    hand_signed(
                        {"alg": "HS256", "kid": "k1"},
                        claims(),
                        json.dumps(jwks_document()["keys"][0]).encode(),
                    ),
                    # An RS256 token whose kid the JWKS does not hold.
                    jwt.encode(claims(), RSA_PEM, algorithm="RS256", headers={"kid": "nope"}),
                    # Signed by another RSA key under the known kid.
                    jwt.encode(
                        claims(),
                        rsa.generate_private_key(public_exponent=65537, key_size=2048),
                        algorithm="RS256",
                        headers={"kid": "k1"},
                    ),
                    jwt.encode(claims(), None, algorithm="none", headers={"kid": "k1"}),
                ]
                for candidate in bad:
                    assert_unauthorized(await get_events(app, candidate))


def request_with(query: str) -> Request:
    return Request(
        {"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": query}
    )


def test_query_token_only_where_allowed() -> None:
    good = token("q")
    assert extract_token(request_with(f"token={good}".encode()), allow_query=True) == good
    assert extract_token(request_with(f"token={good}".encode()), allow_query=False) is None


async def test_query_token_refused_on_json_route() -> None:
    # Only SSE routes pass allow_query=True; any other authenticated route ignores ?token=.
    from app.security.auth import authenticate

    with pytest.raises(Unauthorized):
        await authenticate(request_with(f"token={token('q')}".encode()))


async def test_query_token_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="herald.access")
    good = token("logged", ttl=1)
    bad = jwt.encode(claims(), "wrong-key-wrong-key-wrong-key-123", algorithm="HS256")
    async with running_app() as app:
        for secret in (good, bad):
            call = StreamCall(app, f"/events?last_event_id=0-0&token={secret}")
            with anyio.fail_after(5):
                await call.run()
    records = [r for r in caplog.records if r.name == "herald.access"]
    assert len(records) == 2
    formatter = JSONFormatter()
    lines = "\n".join(formatter.format(r) for r in records)
    assert good not in lines and bad not in lines
    assert good.split(".")[2] not in caplog.text and bad.split(".")[2] not in caplog.text
    assert "token=%5Bredacted%5D" in lines or "token=[redacted]" in lines
    assert "last_event_id=0-0" in lines


def insert_upload(db: psycopg.Connection, org: str) -> str:
    upload_id = str(uuid.uuid4())
    db.execute(
        "INSERT INTO uploads (id, tenant, user_id, filename, status)"
        " VALUES (%s, %s, %s, %s, 'queued')",
        (upload_id, f"org:{org}", "owner", "data.csv"),
    )
    return upload_id


async def test_upload_stream_tenancy(db: psycopg.Connection) -> None:
    upload_id = insert_upload(db, "org-a")
    async with running_app() as app:
        mate = StreamCall(
            app,
            f"/uploads/{upload_id}/events",
            {"authorization": f"Bearer {token('colleague', org='org-a', ttl=1)}"},
        )
        with anyio.fail_after(5):
            await mate.run()
        assert mate.status == 200
        assert b"event: token_expired" in mate.body
        for path, bearer in [
            (f"/uploads/{upload_id}/events", token("intruder", org="org-b")),
            # No org claim: a tenant of one, never org-a.
            (f"/uploads/{upload_id}/events", token("loner")),
            ("/uploads/not-a-uuid/events", token("colleague", org="org-a")),
            (f"/uploads/{uuid.uuid4()}/events", token("colleague", org="org-a")),
        ]:
            call = await get_events(app, bearer, path)
            assert call.status == 404, path
            assert json.loads(bytes(call.body))["error"]["code"] == "not_found"
        # Authentication comes before the lookup: no token, no hint the upload exists.
        assert_unauthorized(await get_events(app, None, f"/uploads/{upload_id}/events"))


def test_mint_token_round_trip() -> None:
    decoded = jwt.decode(mint_token("u", org_id="o"), SECRET, algorithms=["HS256"])
    assert decoded["sub"] == "u" and decoded["org"] == "o"


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ({"sec-fetch-site": "cross-site"}, False),
        # A sibling subdomain shares the cookie jar but is another origin.
        ({"sec-fetch-site": "same-site"}, False),
        ({"origin": "https://evil.example"}, False),
        ({"origin": "null"}, False),
        ({"origin": "https://t"}, False),  # the scheme is part of the origin
        ({"origin": "http://t:8080"}, False),  # and the port
        ({"origin": "http://t:99999"}, False),  # not a port at all
        ({"sec-fetch-site": "same-origin", "origin": "http://t"}, True),
        ({"sec-fetch-site": "none"}, True),  # typed in the address bar, a bookmark
        ({"origin": "http://t"}, True),
        ({"origin": "http://T:80"}, True),  # default port, any case
        ({}, True),  # not a browser: nothing to forge
    ],
)
async def test_cookie_refused_on_cross_site_post(headers: dict[str, str], accepted: bool) -> None:
    # A form on another site can POST text/plain with the victim's cookie (CSRF).
    import httpx

    async with running_app() as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            client.cookies.set("herald_token", token("csrf-user"))
            response = await client.post(
                "/chat/messages",
                content=b'{"message": "x" , "conversation_id": "nope"}',
                headers={"content-type": "text/plain", **headers},
            )
            safe = await client.get("/chat/conversations", headers=headers)
    assert response.status_code == (404 if accepted else 401)  # 404: unknown conversation
    assert safe.status_code == 200


async def test_https_origin_behind_the_proxy_is_same_origin() -> None:
    # Behind Heroku the app speaks http; the router says the client used https.
    import httpx

    async with running_app() as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            client.cookies.set("herald_token", token("csrf-proxy"))
            response = await client.post(
                "/chat/messages",
                content=b'{"message": "x", "conversation_id": "nope"}',
                headers={
                    "content-type": "text/plain",
                    "origin": "https://t",
                    "x-forwarded-proto": "https",
                    "x-forwarded-for": "203.0.113.9",
                },
            )
    assert response.status_code == 404  # past the CSRF check: the conversation is unknown


async def test_huge_exp_without_a_lifetime_limit() -> None:
    # JWT_MAX_LIFETIME_SECONDS=0 turns the limit off; exp >= 2**1024 must still not
    # overflow float() (it was a 500).
    verifier = TokenVerifier(secret=SECRET, algorithms=["HS256"], max_lifetime=0)
    principal = await verifier.verify(jwt.encode(claims(exp=2**1024), SECRET, "HS256"))
    assert principal.seconds_left() > 10 * 365 * 86400


async def test_roles_claim() -> None:
    verifier = TokenVerifier.from_settings()
    admin = await verifier.verify(mint_token("r", org_id="o", roles=["viewer", "admin"]))
    scoped = await verifier.verify(jwt.encode(claims(roles="admin viewer"), SECRET, "HS256"))
    plain = await verifier.verify(mint_token("r", org_id="o"))
    assert admin.is_admin and scoped.is_admin and not plain.is_admin
