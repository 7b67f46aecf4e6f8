"""Bytes into CSV records: encoding detection, incremental decoding, line splitting and
RFC 4180 parsing, in memory that does not grow with the file. What the records mean (the
delimiter, the header, the column types) is format.py's concern.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
from collections.abc import Iterable, Iterator
from typing import Final

from core import settings

QUOTECHAR: Final = '"'
# A physical line (or the text since the last newline) longer than this aborts the read: a
# single-line 10 MB "CSV" must not be buffered whole. Several max-size fields may share a line.
MAX_LINE_CHARS: Final = 8 * settings.UPLOAD_MAX_FIELD_BYTES
# Share of C0 control bytes (other than \t \n \r \f \v, ESC) above which a sample is binary.
MAX_CONTROL_RATIO: Final = 0.01


class CsvFormatError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- encoding ------------------------------------------------------------------------------

_TEXT_CONTROLS: Final = frozenset(b"\t\n\r\x0b\x0c\x1b")
# The other C0 bytes; counted by deleting them (bytes.translate), not a Python step per byte.
_CONTROLS: Final = bytes(b for b in range(0x20) if b not in _TEXT_CONTROLS)
# Single-byte Latin-script code pages charset-normalizer tends to pick for Western European
# text (it chose cp1250 for both the latin-1 and cp1252 fixtures); for these we apply the
# deterministic cp1252/latin-1 rule instead. Other scripts (Cyrillic, CJK, ...) are trusted.
_LATIN_SINGLE_BYTE: Final = frozenset(
    codecs.lookup(n).name
    for n in (
        "cp1250",
        "cp1252",
        "cp1257",
        "latin-1",
        "iso8859-2",
        "iso8859-15",
        "cp437",
        "cp850",
        "cp852",
        "cp775",
        "mac-roman",
        "mac-latin2",
    )
)
_CP1252_UNDEFINED: Final = frozenset(b"\x81\x8d\x8f\x90\x9d")


def detect_encoding(sample: bytes, *, is_final: bool) -> str:
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # the decoder consumes the BOM and picks the byte order from it
    controls = len(sample) - len(sample.translate(None, _CONTROLS))
    if b"\x00" in sample or controls > MAX_CONTROL_RATIO * max(len(sample), 1):
        raise CsvFormatError("not_text", "the file looks binary (NUL or control bytes), not CSV")
    try:
        # Incremental and final=is_final so a sample cut inside a multibyte character is still
        # UTF-8: the decoder just holds the incomplete tail.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=is_final)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    guess = codecs.lookup(best.encoding).name if best is not None else None
    if guess is not None and guess not in _LATIN_SINGLE_BYTE:
        return guess
    # Western fallback: cp1252 is a superset of latin-1's printable range and puts curly quotes,
    # dashes and the euro sign in 0x80-0x9F, where latin-1 has C1 control codes that no real
    # text contains (WHATWG Encoding even maps the "latin1" label to windows-1252).
    c1 = {b for b in sample if 0x80 <= b <= 0x9F}
    if c1 and not c1 & _CP1252_UNDEFINED:
        return "cp1252"
    return "latin-1"


# --- line splitting and parsing ------------------------------------------------------------


def line_blocks(texts: Iterable[str]) -> Iterator[str]:
    """Regroup decoded text into blocks that end at a line break, so lines never straddle
    two blocks. A trailing "\r" is held back: its "\n" may start the next piece."""
    tail = ""
    for piece in texts:
        text = tail + piece if tail else piece
        stop = len(text) - 1 if text.endswith("\r") else len(text)
        cut = max(text.rfind("\n", 0, stop), text.rfind("\r", 0, stop)) + 1
        if cut:
            yield text[:cut]
        tail = text[cut:]
        if len(tail) > MAX_LINE_CHARS:
            raise CsvFormatError(
                "line_too_long",
                f"a line is longer than {MAX_LINE_CHARS} characters without a line break",
            )
    if tail:
        yield tail


def split_lines(texts: Iterable[str]) -> Iterator[str]:
    """Split decoded text into lines ending in \r\n, \r or \n (kept), like a file opened
    with newline='' which the csv docs require so quoted newlines survive; io.StringIO with
    newline='' splits exactly there, in C. str.splitlines is not usable: it also splits on
    \x0b, \x0c, \x1c-\x1e, \x85, U+2028 and U+2029."""
    return itertools.chain.from_iterable(
        io.StringIO(block, newline="") for block in line_blocks(texts)
    )


def decode(chunks: Iterable[bytes], encoding: str) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    try:
        for chunk in chunks:
            text = decoder.decode(chunk)
            offset += len(chunk)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise CsvFormatError(
            "decode_error",
            f"bytes near offset {offset + exc.start} are not valid {encoding} "
            "(the encoding was detected from the start of the file)",
        ) from exc
    if tail:
        yield tail


def read_records(lines: Iterable[str], delimiter: str) -> Iterator[list[str]]:
    # RFC 4180 quoting (doubled quotes inside quoted fields); strict=False so a stray quote in
    # an unquoted field is data, as spreadsheets write it. csv.field_size_limit is process
    # global: raise it to the configured cap, which also bounds a field with an unclosed quote.
    csv.field_size_limit(settings.UPLOAD_MAX_FIELD_BYTES)
    reader = csv.reader(lines, delimiter=delimiter, quotechar=QUOTECHAR, doublequote=True)
    # Blank lines carry no row (csv yields [] for them). Rows are taken in slices, in C: a
    # Python step per row here cost ~0.15 s per million rows.
    rows = filter(None, reader)
    try:
        while part := list(itertools.islice(rows, 1024)):
            yield from part
    except csv.Error as exc:
        code = "field_too_large" if "field larger" in str(exc) else "malformed_csv"
        raise CsvFormatError(code, f"line {reader.line_num}: {exc}") from exc
