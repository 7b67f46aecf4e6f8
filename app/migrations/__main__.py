"""``python -m app.migrations`` (the Procfile's ``release``): apply pending migrations.

A package runs its ``__main__`` module under ``-m``, never its ``__init__``'s
``if __name__ == "__main__"`` block (Python docs: "__main__ — Top-level code environment").
"""

from __future__ import annotations

import logging

from app.migrations import apply_migrations
from core.logs import configure_logging

configure_logging()
names = apply_migrations()
logging.getLogger("herald.migrations").info("migrations up to date (%d applied now)", len(names))
