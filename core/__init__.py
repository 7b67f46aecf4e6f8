"""The shared kernel: what the web process (``app``) and the workers (``jobs``) both
need: settings, the event bus, vocabularies, log and metric plumbing. It imports
neither ``app`` nor ``jobs`` (``tests/test_boundaries.py``)."""
