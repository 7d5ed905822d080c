"""Reading delimited text files strictly: every problem is reported with file, line and field.

Files are parsed by pandas' C parser into string columns (fast enough for MovieLens-25M), then
each column is converted and checked vectorised; the first bad row is located by its line
number in the file (row index + 1, + 1 more when the file has a header line).
"""
import csv
import io
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from llm4msr.errors import DataError
from llm4msr.files import is_file, read_bytes

# Unix time in seconds or milliseconds: negatives and values that overflow int64 are refused, as they
# would silently reorder the time split
TIMESTAMP_RANGE = (0, 10 ** 13)
QUOTED_PREFIX = 60  # characters of a bad value an error message repeats


def quoted(value) -> str:
    """`repr` of a bad value, cut to a short prefix (a 10 MB field must not flood stderr)."""
    text = str(value)
    return repr(text) if len(text) <= QUOTED_PREFIX else f"{text[:QUOTED_PREFIX]!r}... ({len(text):,} characters)"


@dataclass
class Table:
    """A parsed file: string columns plus what is needed to point at a line of the file."""

    path: str  # a local path or a URI
    frame: pd.DataFrame
    has_header: bool

    def line_of(self, row_position: int) -> int:
        return int(row_position) + 1 + int(self.has_header)

    def fail(self, row_position: int, field: Optional[str], message: str):
        raise DataError(self.path, message, line=self.line_of(row_position), field=field)

    # -- typed columns -------------------------------------------------------------------------
    def strings(self, column: str, allow_empty: bool = False) -> pd.Series:
        values = self.frame[column]
        if not allow_empty:
            empty = (values.str.strip() == "").to_numpy()
            if empty.any():
                self.fail(_first(empty), column, "value is missing or empty")
        return values.str.strip()

    def numbers(self, column: str, integer: bool = False) -> pd.Series:
        raw = self.frame[column].str.strip()
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna().to_numpy()
        if integer:
            bad |= ~np.isclose(values.fillna(0).to_numpy(), np.round(values.fillna(0).to_numpy()))
        if bad.any():
            position = _first(bad)
            kind = "an integer" if integer else "a number"
            if raw.iloc[position] == "":  # also what pandas gives for a row with too few fields
                self.fail(position, column, f"value is missing or empty (expected {kind})")
            self.fail(position, column, f"cannot parse {quoted(raw.iloc[position])} as {kind}")
        return values.astype("int64") if integer else values.astype("float64")

    def timestamps(self, column: str = "timestamp") -> pd.Series:
        """Integer Unix times in `TIMESTAMP_RANGE` (seconds or milliseconds)."""
        low, high = TIMESTAMP_RANGE
        raw = self.frame[column].str.strip()
        values = pd.to_numeric(raw, errors="coerce")  # floats first: an int64 cast would wrap around
        bad = (values.notna() & ~((values >= low) & (values < high))).to_numpy()  # unparsable: `numbers` says so
        if bad.any():
            position = _first(bad)
            self.fail(position, column, f"timestamp {quoted(raw.iloc[position])} is out of range (expected Unix "
                                        f"time in seconds or milliseconds, {low} <= t < {high:.0e})")
        return self.numbers(column, integer=True)

    def choice(self, column: str, allowed: Sequence[str], what: str) -> pd.Series:
        values = self.strings(column)
        bad = (~values.isin(list(allowed))).to_numpy()
        if bad.any():
            position = _first(bad)
            self.fail(position, column,
                      f"unknown {what} {quoted(values.iloc[position])} (expected one of: {', '.join(allowed)})")
        return values

    def check_unique(self, columns: Sequence[str], what: str):
        duplicated = self.frame.duplicated(subset=list(columns), keep=False).to_numpy()
        if duplicated.any():
            rows = np.flatnonzero(duplicated)
            key = tuple(self.frame.iloc[rows[0]][list(columns)])
            same = rows[(self.frame.iloc[rows][list(columns)] == key).all(axis=1).to_numpy()]
            self.fail(same[1], ",".join(columns),
                      f"duplicate {what} {key} (first seen on line {self.line_of(same[0])})")


def read_table(path, *, sep: str = ",", columns: Optional[Sequence[str]] = None,
               required: Sequence[str] = (), encoding: str = "utf-8", quoted: bool = True) -> Table:
    """Parse `path` into a `Table` of string columns.

    `columns` names the columns of a file without a header line; otherwise the header is read
    and must contain every name in `required`.
    """
    path = str(path)
    if not is_file(path):
        raise DataError(path, "file not found")
    text = _decode(path, encoding)
    if not text.strip():
        raise DataError(path, "file is empty")
    has_header = columns is None
    if sep not in (",", "\t", "|"):  # multi-character separators such as '::' need the slow parser
        text, sep = text.replace(sep, "\x1f"), "\x1f"
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                            header=0 if has_header else None, names=columns,
                            quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
                            skipinitialspace=False, engine="c")
    except pd.errors.ParserError as error:
        raise DataError(path, f"malformed row: {error}", line=_line_in(str(error))) from None
    table = Table(path, frame, has_header)
    if has_header:
        frame.columns = [str(c).strip() for c in frame.columns]
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise DataError(path, f"missing column(s) {', '.join(missing)}; the header has "
                                  f"{', '.join(frame.columns)}", line=1)
    if frame.empty:
        raise DataError(path, "file has no data rows")
    return table


def _decode(path: str, encoding: str) -> str:
    raw = read_bytes(path)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(path, f"byte 0x{raw[error.start]:02x} is not valid {encoding}; is the file in "
                              f"another encoding (MovieLens 100K and 1M are ISO-8859-1)?",
                        line=line) from None
    return text.lstrip("\ufeff")


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _line_in(message: str) -> Optional[int]:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None
