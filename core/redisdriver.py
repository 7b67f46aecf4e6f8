"""What Herald's Redis connections tell the server about their client (``CLIENT SETINFO``).

redis-py builds this per connection unless it is given one, and building it reads the
installed package's metadata (``importlib.metadata.version``, a scan of ``sys.path``):
0.5 ms per connection on an idle machine, several on a busy loop. A burst of replies
that grows the chat worker's pools spent ~8 % of the loop's samples there (py-spy,
``scripts/bench_chat_concurrency.py --scenario k500``). It is built once per process instead;
the server still sees the same library name and version in ``CLIENT LIST``.
"""

from __future__ import annotations

import functools

from redis.driver_info import DriverInfo


@functools.cache
def driver_info() -> DriverInfo:
    """Pass as ``driver_info=`` to every Redis client and pool."""
    return DriverInfo()
