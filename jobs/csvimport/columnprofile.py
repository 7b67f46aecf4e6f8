"""A column's profile accumulated cell by cell in bounded memory (`ColumnProfile`), for the
jsonb "wide" layout, whose cells PostgreSQL cannot aggregate as typed columns."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections import Counter
from typing import Any, Final

from core.columntypes import ColumnType
from jobs.csvimport.celltypes import ColumnSpec, Value
from jobs.csvimport.columntypes import RECORDS

# Distinct values are counted exactly (by 64-bit hash, so long texts cost 8 bytes each) up to
# this many, then by HyperLogLog and reported with "distinct_approximate": true.
DISTINCT_EXACT_CAP: Final = 10_000
# Top-value candidates kept for text/bool; beyond it the Misra-Gries summary applies (counts
# become lower bounds, but any value above n/TOP_CAPACITY is guaranteed to survive).
TOP_CAPACITY: Final = 10_000
# Top-value keys are truncated so a column of 1 MiB cells cannot hold GBs in the counter.
TOP_VALUE_MAX_CHARS: Final = 200
TOP_N: Final = 5

_HLL_P: Final = 12  # 4096 registers: ~1.6% standard error (Flajolet et al. 2007, 1.04/sqrt(m))
_HLL_M: Final = 1 << _HLL_P
_MASK64: Final = (1 << 64) - 1


class _HyperLogLog:
    __slots__ = ("registers",)

    def __init__(self) -> None:
        self.registers = bytearray(_HLL_M)

    def add_hash(self, h: int) -> None:
        h &= _MASK64
        idx = h >> (64 - _HLL_P)
        rest = (h << _HLL_P) & _MASK64
        rank = 64 - _HLL_P + 1 if rest == 0 else 65 - rest.bit_length()
        if rank > self.registers[idx]:
            self.registers[idx] = rank

    def estimate(self) -> int:
        alpha = 0.7213 / (1 + 1.079 / _HLL_M)
        z = sum(2.0**-r for r in self.registers)
        est = alpha * _HLL_M * _HLL_M / z
        zeros = self.registers.count(0)
        if est <= 2.5 * _HLL_M and zeros:
            est = _HLL_M * math.log(_HLL_M / zeros)  # small-range (linear counting) correction
        return round(est)


def _hash(text: str) -> int:
    # Stable across processes, unlike hash() of a str (randomised per process, PYTHONHASHSEED),
    # so a re-run reports the same estimate.
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


# Means of datetimes are seconds from this instant (UTC, as _key and extract(epoch) count),
# so they carry a zone like min and max do (API.md: time stamps ISO 8601 with a zone).
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _key(value: Value) -> float | int:
    # Comparable key for min/max/mean: aware datetimes (a column may mix zones) go to UTC.
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return (value - dt.datetime(1970, 1, 1)).total_seconds()
    if isinstance(value, dt.date):
        return value.toordinal()
    if isinstance(value, bool):
        return int(value)
    assert isinstance(value, int | float)
    return value


class ColumnProfile:
    def __init__(self, col: ColumnSpec) -> None:
        self.col = col
        self.count = 0
        self.nulls = 0
        self.invalid = 0
        self._hashes: set[int] | None = set()
        self._hll: _HyperLogLog | None = None
        self._min: Value | None = None
        self._max: Value | None = None
        self._min_key = 0.0
        self._max_key = 0.0
        self._sum = 0.0
        self._n = 0
        self._top: Counter[str] = Counter()

    def add(self, value: Value | None, error: str | None) -> None:
        """Feed one `parse_cell` result."""
        self.count += 1
        if error is not None:
            self.invalid += 1
            return
        if value is None:
            self.nulls += 1
            return
        h = _hash(value if isinstance(value, str) else repr(value))
        if self._hashes is not None:
            self._hashes.add(h)
            if len(self._hashes) > DISTINCT_EXACT_CAP:
                self._hll = _HyperLogLog()
                for old in self._hashes:
                    self._hll.add_hash(old)
                self._hashes = None
        else:
            assert self._hll is not None
            self._hll.add_hash(h)
        if RECORDS[self.col.type].mean_key is None:
            self._add_top(str(value)[:TOP_VALUE_MAX_CHARS])
            return
        k = _key(value)
        if self._n == 0 or k < self._min_key:
            self._min, self._min_key = value, k
        if self._n == 0 or k > self._max_key:
            self._max, self._max_key = value, k
        self._sum += k
        self._n += 1

    def _add_top(self, key: str) -> None:
        top = self._top
        top[key] += 1
        if len(top) > 2 * TOP_CAPACITY:
            # Batched Misra-Gries (Misra & Gries 1982): subtract the TOP_CAPACITY-th largest
            # count from every counter and drop the non-positive ones; amortised O(1) per add.
            cut = sorted(top.values(), reverse=True)[TOP_CAPACITY]
            self._top = Counter({k: c - cut for k, c in top.items() if c > cut})

    @property
    def distinct(self) -> int:
        if self._hashes is not None:
            return len(self._hashes)
        assert self._hll is not None
        return self._hll.estimate()

    def _mean(self) -> Any:
        if self._n == 0:
            return None
        mean = self._sum / self._n
        if self.col.type == ColumnType.DATE:
            return dt.date.fromordinal(round(mean)).isoformat()
        if self.col.type == ColumnType.DATETIME:
            return (EPOCH + dt.timedelta(seconds=mean)).isoformat()
        return mean

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.col.name,
            "type": self.col.type,
            "nulls": self.nulls,
            "invalid": self.invalid,
            "distinct": self.distinct,
            "distinct_approximate": self._hashes is None,
        }
        if RECORDS[self.col.type].mean_key is None:
            out["top"] = [
                {"value": v, "count": c}
                for v, c in sorted(self._top.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]
            ]
            return out

        def jsonable(v: Value | None) -> Any:
            return v.isoformat() if isinstance(v, dt.date) else v

        out["min"] = jsonable(self._min)
        out["max"] = jsonable(self._max)
        out["mean"] = self._mean()
        return out
