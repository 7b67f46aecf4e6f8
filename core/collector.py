"""CPython's cyclic garbage collector, tuned per process for allocation-heavy work.

At CPython's gen-0 threshold of 700 container objects the collector runs every few
hundred allocations. A chat worker with hundreds of replies in flight allocates fast
(LangGraph's state, httpx and redis-py objects) and holds a large heap, so each gen-2 pass
walks all of it: with 500 replies at once, in-process, ~1,200 collections took ~1.6 s and
the longest 200 ms (a pause of every stream on the loop); at 10,000 it was ~70
collections, none of gen 2, and 20-25 % less CPU per reply (docs/benchmarks.md). Nothing
is leaked by collecting later: unreachable cycles wait a little longer, non-cyclic garbage
is freed by reference counting as before (Python docs, "gc — Garbage Collector interface").
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gen0_threshold(allocations: int) -> Iterator[None]:
    """Run the block with the collector's gen-0 threshold at ``allocations`` (0 or less:
    leave it as it is); the other generations' thresholds and the old value return after."""
    old = gc.get_threshold()
    if allocations > 0:
        gc.set_threshold(allocations, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)
