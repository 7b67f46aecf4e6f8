"""Column types decided from every value of a file (issue 14).

A column has the first type in `celltypes.candidates` order (bool, then integer / float per
number style, then date / date-time per pattern) that every non-null value fits strictly
(no leading zeros, exact decimals), else text: one non-integer makes an integer column
float, one non-number makes it text; no cell is ever rejected for the type inference chose.

The import guesses from the first MiB (`guess_columns`) and checks every later cell against
the guess while it loads; a cell that does not fit (`batch.Checked.misfits`) sends it back
for one typing pass over the whole file (`ColumnGuess.feed` per batch) and a second load with
the types that pass decided, so a file whose head is representative is read once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from core.columntypes import ColumnType
from jobs.csvimport.batch import fits
from jobs.csvimport.celltypes import ColumnSpec, Inferred, candidates, is_null, year_label


def _spec(inferred: Inferred, forced: bool) -> ColumnSpec:
    return ColumnSpec(
        "",
        "",
        inferred.type,
        inferred.date_format,
        inferred.decimal_comma,
        inferred.thousands_sep,
        forced=forced,
    )


class ColumnGuess:
    """The candidates a column's values so far all fit, narrowed batch by batch."""

    def __init__(self, delimiter: str) -> None:
        self.alive = [_spec(c, forced=False) for c in candidates(delimiter)]
        self.present = False  # any non-null value seen
        self.two_digit_sample: list[str] = []

    def feed(self, cells: Sequence[str], *, last: bool = False) -> None:
        """Narrow to the candidates every cell fits; `last`: these are all the cells, so
        only the first such candidate (`best`) is needed and the rest go untried."""
        # Each value tried once: a bool or code column of 12,000 cells holds a few.
        values = list(set(cells))
        if not self.present:
            self.present = any(not is_null(c, ColumnType.INT) for c in values)
        if last:
            self.alive = next(([c] for c in self.alive if fits(values, c)), [])
        else:
            self.alive = [c for c in self.alive if fits(values, c)]
        if len(self.two_digit_sample) < 1000:
            self.two_digit_sample += [c.strip() for c in cells[:1000] if c.strip()]

    def best(self) -> Inferred:
        if not self.present or not self.alive:
            return Inferred(ColumnType.TEXT)
        c = self.alive[0]
        inferred = Inferred(c.type, c.date_format, c.decimal_comma, c.thousands_sep)
        return year_label(inferred, self.two_digit_sample)


def infer_column(
    values: Sequence[str], delimiter: str, forced: ColumnType | None = None
) -> Inferred:
    """A column's type from these values; `forced` fixes the type but still picks the
    number style / date pattern that fits the most values."""
    if forced is None:
        guess = ColumnGuess(delimiter)
        guess.feed(values, last=True)
        return guess.best()
    present = [v.strip() for v in values if not is_null(v, ColumnType.INT)]
    options = candidates(delimiter, forced)
    if forced == ColumnType.TEXT or not present:
        return options[0]

    def fitting(c: Inferred) -> int:
        spec = _spec(c, forced=True)
        return sum(1 for v in present if fits([v], spec))

    best = max(options, key=fitting)  # max keeps the earliest of equal counts
    return year_label(best, present)


def with_type(col: ColumnSpec, inferred: Inferred) -> ColumnSpec:
    return replace(
        col,
        type=inferred.type,
        date_format=inferred.date_format,
        decimal_comma=inferred.decimal_comma,
        thousands_sep=inferred.thousands_sep,
        undecided=False,
    )


def decide(
    columns: list[ColumnSpec], delimiter: str, batches: Iterable[Sequence[Sequence[str]]]
) -> list[ColumnSpec]:
    """The whole-file type of every inferred column, from batches of rows (fitted to the
    header's width); forced columns are kept."""
    guesses = {i: ColumnGuess(delimiter) for i, c in enumerate(columns) if not c.forced}
    for rows in batches:
        if rows:
            cells = list(zip(*rows, strict=True))
            for i, guess in guesses.items():
                guess.feed(cells[i])
    return [with_type(c, guesses[i].best()) if i in guesses else c for i, c in enumerate(columns)]
