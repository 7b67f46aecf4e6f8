"""Who is calling: bearer JWTs per API.md "Authentication and tenancy".

Follows RFC 8725 (JWT best current practices): the accepted algorithms come from
configuration, never from the token's header (section 3.1), ``none`` is never accepted,
and ``exp``/``sub`` are required claims.
"""

from __future__ import annotations

import time
import unicodedata
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
from core.principal import Identity

COOKIE_NAME = "herald_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HMAC_ALGORITHMS = {"HS256", "HS384", "HS512"}


_DEFAULT_PORTS = {"http": 80, "https": 443}
# exp is kept as a float for timers; no token lives this long (and a bigger int would
# overflow float()).
_FAR_FUTURE = 10**11


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    org: str | None  # None: a tenant of one (API.md)
    expires_at: float
    roles: frozenset[str] = frozenset()

    @property
    def identity(self) -> Identity:
        return Identity(self.user_id, self.org)

    @property
    def tenant(self) -> str:
        """Whose uploads this caller sees (core/principal.py)."""
        return self.identity.tenant

    @property
    def key(self) -> str:
        """The caller's own chats, stream, slots and limits (core/principal.py)."""
        return self.identity.key

    @property
    def is_admin(self) -> bool:
        return settings.JWT_ADMIN_ROLE in self.roles

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
        max_lifetime: int = 0,
        max_id_chars: int = 255,
        roles_claim: str = "roles",
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
        self._max_lifetime = max_lifetime
        self._max_id_chars = max_id_chars
        self._roles_claim = roles_claim

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
            max_lifetime=settings.JWT_MAX_LIFETIME_SECONDS,
            max_id_chars=settings.JWT_MAX_ID_CHARS,
            roles_claim=settings.JWT_ROLES_CLAIM,
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
        sub = self._id_claim(claims, "sub")
        org = self._id_claim(claims, "org") if claims.get("org") is not None else None
        # PyJWT checked exp (and iat) are integers; they may still be any size.
        exp = int(claims["exp"])
        if self._max_lifetime > 0:
            issued = int(claims["iat"]) if "iat" in claims else int(time.time())
            if exp - issued > self._max_lifetime:
                raise Unauthorized(
                    f"The token lives longer than {self._max_lifetime} seconds.",
                    details={"max_lifetime_seconds": self._max_lifetime},
                )
        return Principal(
            user_id=sub,
            org=org,
            expires_at=float(min(exp, _FAR_FUTURE)),
            roles=self._roles(claims),
        )

    def _id_claim(self, claims: dict[str, Any], name: str) -> str:
        # A malformed tenant claim is a bad token, not "no tenant": silently making the
        # caller a tenant of one would hide an issuer bug. Ids key PostgreSQL rows (no
        # NUL, bounded index entries) and log lines (no control characters).
        value = claims.get(name)
        if not isinstance(value, str) or not value:
            raise Unauthorized(f"The token's '{name}' claim must be a non-empty string.")
        if len(value) > self._max_id_chars:
            raise Unauthorized(
                f"The token's '{name}' claim is longer than {self._max_id_chars} characters."
            )
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise Unauthorized(f"The token's '{name}' claim holds control characters.")
        return value

    def _roles(self, claims: dict[str, Any]) -> frozenset[str]:
        # A JSON array of names, or one space-separated string (the OAuth "scope" style,
        # RFC 8693 section 4.2).
        value = claims.get(self._roles_claim)
        if value is None:
            return frozenset()
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return frozenset(value)
        raise Unauthorized(f"The token's '{self._roles_claim}' claim must be a list of strings.")


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
    # browser sends it, else compare Origin with our own origin; neither: not a browser.
    # "same-site" is refused: a sibling subdomain (another app, user content) is a
    # different origin with the same cookie jar (MDN: Sec-Fetch-Site).
    site = conn.headers.get("sec-fetch-site")
    if site:
        return site not in ("same-origin", "none")
    origin = conn.headers.get("origin")
    if not origin:
        return False
    theirs = _origin(origin)  # None for "null" (a sandboxed or privacy-sensitive context)
    return theirs is None or theirs != _own_origin(conn)


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) per RFC 6454 section 4, default ports filled in."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number, or out of range
        return None
    if not parts.hostname or port is None:
        return None
    return scheme, parts.hostname, port


def _own_origin(conn: HTTPConnection) -> tuple[str, str, int] | None:
    # The scheme is the one the client used: app/proxy.py sets it from the trusted proxy.
    host = conn.headers.get("host", "")
    return _origin(f"{conn.scope.get('scheme', 'http')}://{host}") if host else None


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
    roles: list[str] | None = None,
) -> str:
    """A locally signed token, for development and tests (see README "Tokens")."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if org_id:
        claims["org"] = org_id
    if roles is not None:
        claims[settings.JWT_ROLES_CLAIM] = roles
    if settings.JWT_AUDIENCE:
        claims["aud"] = settings.JWT_AUDIENCE
    if settings.JWT_ISSUER:
        claims["iss"] = settings.JWT_ISSUER
    key = secret if secret is not None else str(settings.JWT_SECRET)
    if not key:
        raise MissingSecret
    return jwt.encode(claims, key, algorithm=algorithm)
