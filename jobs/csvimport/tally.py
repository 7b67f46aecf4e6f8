"""What a load sees besides its rows (`Tally`): ragged rows, two-digit years and the values
of undecided columns, which become `result.warnings` or `Misguessed` (types to re-decide from
the whole file, `jobs.csvimport.inference`)."""

from __future__ import annotations

from typing import Any

from core.columntypes import ColumnType
from jobs.csvimport.batch import Checked
from jobs.csvimport.celltypes import ColumnSpec
from jobs.csvimport.format import warning
from jobs.csvimport.inference import ColumnGuess, with_type


class Misguessed(Exception):
    """A cell did not fit a type inferred from the head of the file. `columns` are the
    whole-file types when this load could tell them (only undecided columns were off),
    else None: a typing pass over the file decides them."""

    def __init__(self, columns: list[ColumnSpec] | None = None) -> None:
        super().__init__("a column type inferred from the head of the file does not fit")
        self.columns = columns


class Tally:
    """What a load saw besides its rows: ragged rows, two-digit years, undecided columns."""

    def __init__(self, columns: list[ColumnSpec], delimiter: str) -> None:
        self.columns = columns
        self.ragged_widths: list[int] = []  # [min, max] of the ragged rows' field counts
        self.ragged = 0
        self.two_digit_years = [0] * len(columns)
        self.guesses = {i: ColumnGuess(delimiter) for i, c in enumerate(columns) if c.undecided}

    def add(self, checked: Checked) -> None:
        if checked.misfits:
            raise Misguessed
        if checked.ragged:
            widths = [*self.ragged_widths, *checked.ragged]
            self.ragged_widths = [min(widths), max(widths)]
        self.ragged += len(checked.ragged)
        self.two_digit_years = [
            a + b for a, b in zip(self.two_digit_years, checked.two_digit_years, strict=True)
        ]
        for i, guess in self.guesses.items():
            if checked.columns:
                guess.feed(checked.columns[i])

    def settle(self) -> None:
        """Raise Misguessed, with the whole-file types, if an undecided column is not text."""
        decided = {i: g.best() for i, g in self.guesses.items()}
        if any(d.type != ColumnType.TEXT for d in decided.values()):
            raise Misguessed(
                [
                    with_type(c, decided[i]) if i in decided else c
                    for i, c in enumerate(self.columns)
                ]
            )

    def warnings(self, valid: int, total: int) -> list[dict[str, Any]]:
        out = []
        for col, n in zip(self.columns, self.two_digit_years, strict=True):
            if n:
                out.append(
                    warning(
                        "two_digit_years",
                        f"Column {col.name!r}: {n} dates have two-digit years, read with the"
                        " POSIX pivot (69-99 are 1969-1999, 00-68 are 2000-2068); check them"
                        " against the data, or upload the file with four-digit years.",
                        column=col.name,
                        cells=n,
                        pivot=69,
                    )
                )
        if valid == 0:
            width = len(self.columns)
            if total == 0:
                out.append(warning("no_data_rows", "The file has a header but no data rows."))
            elif self.ragged == total:
                lo, hi = self.ragged_widths
                fields = f"{lo}" if lo == hi else f"{lo}-{hi}"
                out.append(
                    warning(
                        "no_rows_loaded",
                        f"No row was loaded: the rows have {fields} fields, the header {width}."
                        + (
                            " This looks like a multi-table report (several tables of"
                            " different widths in one file); export one table per file."
                            if lo != hi
                            else " Check the delimiter and the header line."
                        ),
                        header_fields=width,
                        row_fields=[lo, hi],
                    )
                )
            else:
                out.append(
                    warning(
                        "no_rows_loaded",
                        "No row was loaded: every row has a cell that does not fit a type"
                        " set in `columns`, or the wrong number of fields; see the errors.",
                    )
                )
        return out
