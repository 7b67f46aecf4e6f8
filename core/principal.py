"""Whose data it is: the pair (tenant, user), the one key of every chat row, event
stream, stream slot, rate limit and history cache (API.md "Authentication and tenancy").

A user id alone names nobody: identity providers with per-tenant realms reuse ``sub``
across tenants, so ``{"sub": "alice", "org": "x"}`` and ``{"sub": "alice", "org": "y"}``
are two people. Named orgs and tenants of one are disjoint by construction: Herald
itself tags every tenant with its kind (``org:<org>`` or ``user:<sub>``), so no ``org``
claim, whatever its text, can spell another user's tenant of one (``org: "user:dave"``
is the tenant ``org:user:dave``, not ``user:dave``). docs/security.md has the rationale.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

ORG = "org"  # a tenant named by the token's `org` claim
SOLO = "user"  # no `org` claim: the user is a tenant of one


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    org: str | None = None  # None: a tenant of one

    @property
    def tenant(self) -> str:
        """The tenant as stored in PostgreSQL: ``<kind>:<name>``, the kind set by Herald.

        One tag and one free-text part, split at the first ``:``, so it is unambiguous
        without escaping (and a migration can compute it in SQL)."""
        return f"{ORG}:{self.org}" if self.org is not None else f"{SOLO}:{self.user_id}"

    @property
    def key(self) -> str:
        """The pair as one Redis key part. Each free-text part is percent-encoded, so
        neither holds ``:`` (our separator) nor ``/`` (the ``limits`` library's): two
        pairs never share a key, e.g. ("a:b", "c") and ("a", "b:c")."""
        if self.org is None:
            return f"{SOLO}:{quote(self.user_id, safe='')}"
        return f"{ORG}:{quote(self.org, safe='')}:{quote(self.user_id, safe='')}"

    @classmethod
    def from_tenant(cls, tenant: str, user_id: str) -> Identity:
        """The owner of a stored row (its ``tenant`` and ``user_id`` columns)."""
        kind, _, name = tenant.partition(":")
        if kind == ORG:
            return cls(user_id, name)
        if kind == SOLO and name == user_id:
            return cls(user_id)
        raise ValueError(f"not a tenant of user {user_id!r}: {tenant!r}")
