"""``python -m app.security.mint alice --org acme``: print a signed token.

Signs with ``JWT_SECRET`` (HS256), exactly as the web process verifies, for local use
and for a deployment whose tokens Herald signs itself (README "Tokens"). Problems are
one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app.security.auth import MissingSecret, mint_token


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.security.mint",
        description="Print a token for a user, signed with JWT_SECRET.",
    )
    parser.add_argument("user", help="the user id (the token's sub claim)")
    parser.add_argument("--org", help="the tenant (org claim); unset: a tenant of one")
    parser.add_argument(
        "--ttl", type=int, default=86400, help="seconds until it expires (default: 86400)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ttl <= 0:
        print("mint: --ttl must be a positive number of seconds.", file=sys.stderr)
        return 2
    try:
        token = mint_token(args.user, org_id=args.org, ttl_seconds=args.ttl)
    except MissingSecret as exc:
        print(f"mint: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
