"""Checks of a CSV / TSV file before pandas reads it, so a bad file is named by its real cause and line."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import UsageError


def check_table_file(path: Path, delimiter: str) -> None:
    """A CSV / TSV that pandas would read wrongly or explain badly is refused naming the real cause: bytes that are
    not UTF-8 (their line), a header that repeats a column name (pandas renames the copy and one of them is used
    without a word), a row with another number of fields than the header (its line)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header = next(reader, [])
    dup = next((c for i, c in enumerate(header) if c in header[:i]), None)
    if dup is not None:
        raise UsageError(f"{path}: the header names column {dup!r} twice; rename one of them")
    for row in reader:
        if row and len(row) != len(header):
            raise UsageError(f"{path}:{reader.line_num}: {len(row)} fields where the header has {len(header)}; "
                             f"fix that row (a stray {'tab' if delimiter == chr(9) else 'comma: quote the text'}?)")
