"""Who is calling: bearer JWTs per API.md "Authentication and tenancy".

Follows RFC 8725 (JWT best current practices): the accepted algorithms come from
configuration, never from the token's header (section 3.1), ``none`` is never accepted,
and ``exp``/``sub`` are required claims.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import jwt
from starlette.requests import HTTPConnection

from app import metrics
from app.errors import Unauthorized
from app.security.throttle import AuthThrottle, client_address
from core import settings

COOKIE_NAME = "herald_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HMAC_ALGORITHMS = {"HS256", "HS384", "HS512"}


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    org_id: str
    expires_at: float

    def seconds_left(self) -> float:
        return self.expires_at - time.time()


class TokenVerifier:
    """Verifies tokens with the configured key material; one per process (lifespan)."""

    def __init__(
        self,
        *,
        secret: str,
        algorithms: list[str],
        jwks_url: str = "",
        audience: str = "",
        issuer: str = "",
        leeway: int = 0,
        max_bytes: int = 8192,
    ) -> None:
        if "none" in {a.lower() for a in algorithms}:
            raise ValueError("JWT_ALGORITHMS must not contain 'none' (RFC 8725 section 2.1)")
        hmac = [a for a in algorithms if a in _HMAC_ALGORITHMS]
        asymmetric = [a for a in algorithms if a not in _HMAC_ALGORITHMS]
        if hmac and not secret:
            raise ValueError("JWT_SECRET must be set for HMAC algorithms")
        if asymmetric and not jwks_url:
            raise ValueError("JWT_JWKS_URL must be set for RS*/ES* algorithms")
        # Keeping HMAC and public-key algorithms apart is what stops the HS/RS confusion
        # attack: a public key is never used as an HMAC secret (RFC 8725 section 2.1).
        self._secret = secret
        self._hmac = hmac
        self._asymmetric = asymmetric
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True) if jwks_url else None
        self._audience = audience or None
        self._issuer = issuer or None
        self._leeway = leeway
        self._max_bytes = max_bytes

    @classmethod
    def from_settings(cls) -> TokenVerifier:
        return cls(
            secret=str(settings.JWT_SECRET),
            algorithms=list(settings.JWT_ALGORITHMS),
            jwks_url=settings.JWT_JWKS_URL,
            audience=settings.JWT_AUDIENCE,
            issuer=settings.JWT_ISSUER,
            leeway=settings.JWT_LEEWAY_SECONDS,
            max_bytes=settings.JWT_MAX_BYTES,
        )

    async def verify(self, token: str) -> Principal:
        if len(token) > self._max_bytes:
            raise Unauthorized("The token is too large.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("The token is malformed.") from None
        alg = header.get("alg")
        if alg in self._hmac:
            key: Any = self._secret
            algorithms = self._hmac
        elif alg in self._asymmetric and self._jwks is not None:
            jwks = self._jwks
            try:
                # PyJWKClient fetches over blocking urllib; keep it off the event loop.
                signing_key = await anyio.to_thread.run_sync(jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWTError:
                raise Unauthorized("The token's signing key is unknown.") from None
            key = signing_key.key
            algorithms = self._asymmetric
        else:
            raise Unauthorized("The token's algorithm is not accepted.")
        return self._decode(token, key, algorithms)

    def _decode(self, token: str, key: Any, algorithms: list[str]) -> Principal:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"The token lacks the '{exc.claim}' claim.") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("The token's audience is not accepted.") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("The token's issuer is not accepted.") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("The token's signature is not valid.") from None
        except jwt.PyJWTError:
            raise Unauthorized("The token is not valid.") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("The token's 'sub' claim must be a non-empty string.")
        org = claims.get("org")
        if org is not None and (not isinstance(org, str) or not org):
            # A malformed tenant claim is a bad token, not "no tenant": silently making
            # the caller a tenant of one would hide an issuer bug.
            raise Unauthorized("The token's 'org' claim must be a non-empty string.")
        # API.md: without `org` the user is a tenant of one.
        org_id = org if org is not None else f"user:{sub}"
        return Principal(user_id=sub, org_id=org_id, expires_at=float(claims["exp"]))


def extract_token(conn: HTTPConnection, *, allow_query: bool) -> str | None:
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
    cookie = conn.cookies.get(COOKIE_NAME)
    if cookie:
        if conn.scope.get("method", "GET") not in _SAFE_METHODS and _cross_site(conn):
            # The browser attaches the cookie to a form another site posts (CSRF), and
            # a text/plain or multipart form needs no CORS preflight.
            raise Unauthorized("The cookie is not accepted on a cross-site request.")
        return cookie
    # EventSource cannot send headers (MDN: EventSource), so SSE routes accept ?token=.
    if allow_query:
        return conn.query_params.get("token") or None
    return None


async def authenticate(conn: HTTPConnection, *, allow_query: bool = False) -> Principal:
    app = conn.scope.get("app")
    throttle: AuthThrottle | None = getattr(app.state, "auth_throttle", None) if app else None
    address = client_address(conn)
    if throttle is not None:
        throttle.check(address)  # over the limit: 429 before any verification
    try:
        token = extract_token(conn, allow_query=allow_query)
        if token is None:
            raise Unauthorized("A bearer token is required.")
        verifier: TokenVerifier = conn.app.state.verifier
        return await verifier.verify(token)
    except Unauthorized:
        # Only rejected credentials count; "no token at all" is not a guess.
        if throttle is not None and _presented(conn):
            metrics.AUTH_FAILURES.inc()
            await throttle.record_failure(address)
        raise


def _cross_site(conn: HTTPConnection) -> bool:
    # OWASP CSRF Prevention Cheat Sheet: Fetch Metadata (Sec-Fetch-Site) where the
    # browser sends it, else compare Origin with Host; neither header: not a browser.
    site = conn.headers.get("sec-fetch-site")
    if site:
        return site not in ("same-origin", "same-site", "none")
    origin = conn.headers.get("origin")
    if not origin:
        return False
    return origin == "null" or urlsplit(origin).netloc != conn.headers.get("host", "")


def _presented(conn: HTTPConnection) -> bool:
    return bool(
        conn.headers.get("authorization")
        or conn.cookies.get(COOKIE_NAME)
        or conn.query_params.get("token")
    )


class MissingSecret(ValueError):
    """No key to sign a token with (``JWT_SECRET`` unset); the message says what to set."""

    def __init__(self) -> None:
        super().__init__(
            "JWT_SECRET is not set: set it to the secret the web process uses"
            " (scripts/start uses the dev value in README 'Tokens')."
        )


def mint_token(
    user_id: str,
    *,
    org_id: str | None = None,
    ttl_seconds: int = 86400,
    secret: str | None = None,
    algorithm: str = "HS256",
) -> str:
    """A locally signed token, for development and tests (see README "Tokens")."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if org_id:
        claims["org"] = org_id
    if settings.JWT_AUDIENCE:
        claims["aud"] = settings.JWT_AUDIENCE
    if settings.JWT_ISSUER:
        claims["iss"] = settings.JWT_ISSUER
    key = secret if secret is not None else str(settings.JWT_SECRET)
    if not key:
        raise MissingSecret
    return jwt.encode(claims, key, algorithm=algorithm)
