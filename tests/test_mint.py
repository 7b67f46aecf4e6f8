"""Minting a token by hand (issue 10 item 6): ``python -m app.security.mint``, and
``mint_token`` itself, say what to set when ``JWT_SECRET`` is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import jwt
import pytest
from starlette.datastructures import Secret

from app.security.auth import MissingSecret, mint_token
from core import settings


def mint(*args: str, secret: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    if secret is not None:
        env["JWT_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "app.security.mint", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_issue10_mint_without_secret_is_one_line_saying_what_to_set() -> None:
    done = mint("alice", "--org", "acme", secret=None)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "JWT_SECRET is not set" in done.stderr
    assert "Traceback" not in done.stderr


def test_mint_prints_a_token_the_web_accepts() -> None:
    secret = "a-secret-of-at-least-thirty-two-bytes!"
    done = mint("alice", "--org", "acme", "--ttl", "600", secret=secret)
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), secret, algorithms=["HS256"])
    assert (claims["sub"], claims["org"], claims["exp"] - claims["iat"]) == ("alice", "acme", 600)


def test_mint_token_names_the_missing_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "JWT_SECRET", Secret(""))
    with pytest.raises(MissingSecret, match="JWT_SECRET is not set"):
        mint_token("alice")
