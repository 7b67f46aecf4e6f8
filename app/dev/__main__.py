"""``python -m app.dev`` (what ``scripts/start`` runs): web + worker on one machine."""

import sys

from app.dev.start import main

sys.exit(main())
