"""Turn the errors bad input causes into one line that says what to fix (the CLI's one choke point).

`faithforge` commands raise `UserError` for problems they check themselves. Libraries raise their own types for
the rest of what a user can get wrong — a pydantic `ValidationError` for a bad parameter, `UnicodeDecodeError`
for a file that is not UTF-8, SQLAlchemy's `DatabaseError` for a damaged run store, an `OSError` for a path,
an httpx error for a server URL — and `one_line` renders those. Anything else is a bug: the CLI lets it
through with its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from faithforge.core.errors import USER_ERRORS, clip, given_input, validation_message

#: The longest error line the CLI prints (a message listing many problems is cut there, never a value dumped).
MAX_LINE = 2000

#: Local variable names a loader uses for the file it reads (to name the file a decode error came from).
_FILE_LOCALS = ("path", "file", "filename", "spec_path", "labels", "source")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _file_in_traceback(tb: TracebackType | None) -> str | None:
    """The innermost frame's local that names an existing file (the file being read when decoding failed)."""
    found = None
    while tb is not None:
        for name in _FILE_LOCALS:
            value = tb.tb_frame.f_locals.get(name)
            value = getattr(value, "name", value)  # an open file handle
            if isinstance(value, (str, os.PathLike)) and str(value) and Path(value).is_file():
                found = str(value)
        tb = tb.tb_next
    return found


def _validation_line(exc) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or exc.title
        parts.append(f"{where}: {validation_message(err)}{given_input(err)}")
    return "invalid value: " + "; ".join(parts)


def one_line(exc: BaseException) -> str | None:
    """The one-line message for an error caused by bad input, or None for an error that is a bug."""
    for err in _chain(exc):
        line = _describe(err)
        if line is not None:
            return one_line_text(line)  # never more than one line, whatever the library put in it
    return None


def _describe(err: BaseException) -> str | None:
    if isinstance(err, USER_ERRORS):
        return str(err)
    import pydantic

    if isinstance(err, pydantic.ValidationError):
        return _validation_line(err)
    if isinstance(err, UnicodeDecodeError):
        file = _file_in_traceback(err.__traceback__) or "an input file"
        return (f"{file} is not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at position {err.start}); "
                "save it as UTF-8")
    if _is_database_error(err):
        from faithforge.core.store import describe_database_error

        url = getattr(err, "url", None)
        return describe_database_error(None if url is None else str(url), err)
    if _is_http_url_error(err):
        return f"the server URL is not usable ({err}); pass a URL like http://127.0.0.1:11434"
    from faithforge.core.workspace import is_disk_full

    if is_disk_full(err):
        where = f" holding {err.filename}" if getattr(err, "filename", None) else ""
        return (f"no space left on the device{where} ({getattr(err, 'strerror', None) or clip(str(err))}); free "
                "space there and rerun the same command: finished stages and checkpoints are reused")
    if isinstance(err, OSError) and getattr(err, "filename", None):
        return f"{err.filename}: {err.strerror or err}; check the path"
    return None


def _is_database_error(err: BaseException) -> bool:
    import sqlite3

    if isinstance(err, sqlite3.DatabaseError):
        return True
    try:
        from sqlalchemy.exc import DBAPIError
    except ImportError:
        return False
    return isinstance(err, DBAPIError)


def _is_http_url_error(err: BaseException) -> bool:
    try:
        import httpx
    except ImportError:
        return False
    return isinstance(err, (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.ConnectError))


def one_line_text(text: str, limit: int = MAX_LINE) -> str:
    """`text` as one line of at most `limit` characters (a huge bad value inside is cut, not printed whole), with
    any password in a URL redacted."""
    from faithforge.core.errors import redact_credentials

    text = redact_credentials(" ".join(text[: 4 * limit].split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"
