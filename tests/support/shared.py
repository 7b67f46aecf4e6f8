"""Where the shared third-party data lives: ``../shared`` beside the checkout (as for
every session and CI), or ``HERALD_SHARED_DIR``."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("HERALD_SHARED_DIR", ROOT.parent / "shared"))
CSV_DIR = SHARED / "data" / "csv"
INJECTION_FILE = SHARED / "data" / "injection" / "dev.jsonl"
