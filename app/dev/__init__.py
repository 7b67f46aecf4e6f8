"""Developer tooling, never used in production: ``scripts/start``, embedded servers,
the one-click dev token."""
