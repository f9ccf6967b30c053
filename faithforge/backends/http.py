"""HTTP plumbing shared by the Ollama and OpenAI-compatible backends: timeouts, retries, error mapping.

Timeouts are explicit (the official Ollama client has none, and a request once hung for four hours):
`connect_timeout_s` bounds opening the connection, `read_timeout_s` bounds the *silence between two
chunks* (a streamed answer that keeps producing tokens is never cut off by it), and `deadline_s` bounds
the whole request, so nothing hangs forever.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import httpx

from faithforge.backends.base import (
    BackendConfigError,
    BackendError,
    BackendTimeoutError,
    BackendUnreachableError,
    TransientBackendError,
)
from faithforge.core.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class HttpOptions:
    """Timeouts (seconds) and the retry policy of one backend."""

    connect_timeout_s: float = 10.0
    """Longest wait to open a connection."""
    read_timeout_s: float = 300.0
    """Longest silence between two chunks of a response (covers a model load on the first request)."""
    deadline_s: float = 3600.0
    """Longest a single request may take end to end, streaming included."""
    retries: int = 4
    """Extra tries after a busy server (503/429), a refused or dropped connection, or a timeout."""
    backoff_s: float = 1.0
    """Wait before the first retry; doubles on each retry."""
    backoff_max_s: float = 30.0
    """Upper bound of one wait between retries."""

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect_timeout_s, read=self.read_timeout_s, write=60.0,
                             pool=self.connect_timeout_s)


class ConnectFailed(TransientBackendError):
    """The connection never opened (nothing listening, DNS, refused)."""


def check_server_url(option: str, url: str, example: str = "http://127.0.0.1:11434") -> None:
    """An http(s) URL with a host, or a `UserError` naming the option (a request would fail much later)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UserError(f"{option} {url!r} is not a URL ({exc}); use e.g. {example}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UserError(f"{option} {url!r} is not an http(s) URL with a host; use e.g. {example}")


def check_server_answers(option: str, url: str, needed_by: str, timeout_s: float = 3.0) -> None:
    """A server at `url` accepts a connection now, or a `UserError` naming the option: for a server that a stage
    needs only after the training (an llm judge's server with an unreachable address failed the evaluate stage
    after every other stage had run, ~7 min on `--real`; an attack, 2026-12-07). A TCP connection only: whether
    the server serves the model is the stage's own check."""
    import socket

    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.host, port), timeout=timeout_s).close()
    except OSError as exc:
        why = f"no answer in {timeout_s:g} s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise UserError(f"{option} {url} does not answer ({why}); start that server before the run ({needed_by} "
                        f"needs it) or point {option} at it") from None


def make_client(base_url: str, options: HttpOptions, headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=base_url.rstrip("/"), timeout=options.timeout(), headers=headers or {})


def with_retries(call: Callable[[], T], options: HttpOptions, where: str) -> T:
    """Run `call`, retrying retryable errors with exponential backoff; a connection that never opens on
    any try becomes a fatal `BackendUnreachableError` naming `where`."""
    delay = options.backoff_s
    for attempt in range(options.retries + 1):
        try:
            return call()
        except BackendError as exc:
            if not exc.retryable or attempt == options.retries:
                if isinstance(exc, ConnectFailed):
                    raise BackendUnreachableError(
                        f"cannot connect to {where} after {attempt + 1} tries ({exc}); start the server "
                        "or point the setting that names it (--base-url, --llm-base-url, generate.base_url, ...) at "
                        "the right address") from None
                raise
            time.sleep(min(delay, options.backoff_max_s))
            delay *= 2
    raise AssertionError("unreachable")  # the loop always returns or raises


def translate_transport_errors(exc: httpx.HTTPError, where: str, options: HttpOptions) -> BackendError:
    """Map an httpx exception to a typed backend error."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return ConnectFailed(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, httpx.ReadTimeout):
        return BackendTimeoutError(f"{where} sent nothing for {options.read_timeout_s:g} s (read timeout)")
    if isinstance(exc, httpx.TimeoutException):
        return BackendTimeoutError(f"{where} timed out ({type(exc).__name__})")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return TransientBackendError(f"connection to {where} dropped mid-answer ({type(exc).__name__}: {exc})")
    return BackendError(f"{where}: {type(exc).__name__}: {exc}")


def error_message(body: bytes) -> str:
    """The message of an `{"error": "..."}` or `{"error": {"message": ...}}` body, else the raw text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(data, dict) and "error" in data:
        err = data["error"]
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return text[:500]


def server_count(value: Any) -> int:
    """A count the server reports (tokens, nanoseconds) as a whole number; 0 for what is not a finite one ("lots",
    null, a list, `1e400`): counts are bookkeeping, and an odd one never costs the answer it came with."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        return 0
    return int(value)


def json_object(text: str, where: str, *, what: str = "data", failed: str = "failed") -> dict[str, Any]:
    """`text` (a body, an NDJSON line or an SSE payload) as a JSON object; text that is not JSON, JSON that is
    not an object, or an `{"error": ...}` object (a failure after the status was already 200) is a
    `BackendError` naming `where`: "`where` sent `what` that is not JSON", "`where` `failed`: message"."""
    try:
        data = json.loads(text)
    except ValueError:
        raise BackendError(f"{where} sent {what} that is not JSON: {text[:200]!r}") from None
    if not isinstance(data, dict):
        raise BackendError(f"{where} sent {type(data).__name__} instead of an object")
    if "error" in data:
        raise BackendError(f"{where} {failed}: {error_message(text.encode())}")
    return data


def raise_for_status(response: httpx.Response, where: str) -> None:
    """Raise a typed error for a non-2xx response (its body must already be read)."""
    status = response.status_code
    if status < 400:
        return
    message = error_message(response.content)
    if status in (429, 502, 503, 504):
        raise TransientBackendError(f"{where} is busy (HTTP {status}: {message})")
    if status in (401, 403):
        raise BackendConfigError(f"{where} refused the credentials (HTTP {status}: {message}); check the API key")
    if status == 400:
        raise BackendConfigError(f"{where} rejected the request (HTTP 400: {message})")
    raise BackendError(f"{where} failed (HTTP {status}: {message})")


class Deadline:
    """A wall-clock budget for one request (seconds)."""

    def __init__(self, seconds: float, where: str):
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.where = where

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise BackendTimeoutError(f"{self.where} ran past the {self.seconds:g} s request deadline")


def lines_with_deadline(response: httpx.Response, deadline: Deadline) -> Iterator[str]:
    """Non-empty lines of a streamed body, checking the deadline between lines."""
    for line in response.iter_lines():
        deadline.check()
        if line.strip():
            yield line
