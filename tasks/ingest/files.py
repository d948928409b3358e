"""What every file reader shares: opening (gzip by suffix), the one quarantine row for a broken file, a
byte-order-mark sniff, and the gzip integrity check `ingest.corrupt_gzip` decides on.

Why a gzip file is checked whole before it is read: a member's CRC-32 and length are only checked at its
end, so by the time a corrupt file fails, its records have been streamed into the pool already. A
curator cannot tell which of them the damage touched, so by default (`corrupt_gzip = "drop"`) a file that
fails the check gives none of its records, only one `bad_file` row that says so. The check is one extra
decompression pass (zlib runs at a few hundred MB/s, far faster than parsing the JSON behind it). A file
that is merely *cut short* (EOFError: a download that stopped) is not corrupt: the records before the cut
are the file's real first records, so they are kept and the rest is one `bad_file` row, as for any file
that breaks while being read.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from pathlib import Path
from typing import BinaryIO

from tasks.ingest.records import BadRecord, safe_str

# What reading a damaged or vanished file raises (gzip.BadGzipFile is an OSError; pyarrow's are added lazily).
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)
CHECK_CHUNK = 1 << 20
# Byte-order marks of encodings that are not UTF-8 (UTF-32 LE first: it starts with UTF-16 LE's mark).
FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32 LE"), (codecs.BOM_UTF32_BE, "UTF-32 BE"),
                (codecs.BOM_UTF16_LE, "UTF-16 LE"), (codecs.BOM_UTF16_BE, "UTF-16 BE"))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return safe_str(f"{type(exc).__name__}: {text[0] if text else ''}")[:300]


def bad_file(source: str, locator: str, exc: BaseException | str) -> BadRecord:
    """The quarantine item for a file that broke while being read: what was read before it is kept."""
    where = "file unreadable" if locator == "file" else f"reading stopped at {locator}"
    why = exc if isinstance(exc, str) else one_line(exc)
    return BadRecord(source, locator, "bad_file", f"{where}: {why}", "")


def is_gzip(path: Path) -> bool:
    return path.name.endswith(".gz")


def open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def foreign_encoding(head: bytes) -> str | None:
    """The encoding a file starting with `head` is in, when a byte-order mark says it is not UTF-8.

    The mark alone is not proof: a UTF-8 JSONL file may start with a garbage line that happens to begin
    with FF FE, and only that line is lost then. So the text after the mark must also look like UTF-16/32
    (a quarter or more NUL bytes: JSON's ASCII punctuation and keys are 2 or 4 bytes with NULs there).
    """
    for bom, name in FOREIGN_BOMS:
        if head.startswith(bom):
            rest = head[len(bom):]
            return name if rest and rest.count(0) * 4 >= len(rest) else None
    return None


def not_utf8_file(source: str, encoding: str) -> BadRecord:
    """One row for a whole file in another Unicode encoding: every line of it would fail, and say less."""
    detail = (f"file is {encoding} (it starts with that byte-order mark), not UTF-8: convert it, e.g. "
              f"`iconv -f {encoding.replace(' ', '')} -t UTF-8`")
    return BadRecord(source, "file", "not_utf8", detail, "")


def gzip_corruption(path: Path) -> str | None:
    """Why a .gz file fails its integrity check (CRC-32, length, deflate stream), else None.

    A file that is only truncated passes (None): see the module docstring. Other read errors are left to
    the reader, which reports them where they happen.
    """
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(CHECK_CHUNK):
                pass
    except zlib.error as exc:
        return one_line(exc)
    except gzip.BadGzipFile as exc:
        message = str(exc)
        return one_line(exc) if "CRC" in message or "length" in message else None
    except (OSError, EOFError):
        return None
    return None


def corrupt_gzip_file(source: str, why: str) -> BadRecord:
    detail = (f"gzip integrity check failed ({why}): none of its records were used, since the damage may be "
              "in any of them; set ingest.corrupt_gzip = \"keep\" to keep the records read before the error")
    return BadRecord(source, "file", "bad_file", safe_str(detail), "")
