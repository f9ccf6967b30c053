"""Loopback fake LLM servers that speak the real wire formats, for the generation tests.

`FakeOllama`: `/api/chat` NDJSON streaming over chunked transfer encoding (final chunk with `done: true`,
`done_reason`, nanosecond metrics with zero values *omitted*), `stream: false` bodies, `{"error": ...}`
bodies with their status codes, error lines after streaming began (status 200), `/api/ps`, `/api/show`,
and unloading through `/api/generate` with `keep_alive: 0`.
`FakeOpenAI`: `/v1/chat/completions` Server-Sent Events (`data: {...}` chunks, a usage chunk with empty
`choices`, `data: [DONE]`), non-streamed bodies, and `{"error": {"message": ...}}` objects.

Each request takes the next scripted behaviour (`push`), or the default reply (`default`, a function
of the request body). Behaviours: `Reply`, `Status`, `MidStreamError`, `Drop` (connection closed
mid-stream), `Stall` (silence past the client's read timeout).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    content: str
    thinking: str = ""
    """Ollama: sent in `message.thinking`; OpenAI: in `delta.reasoning_content`."""
    finish: str = "stop"
    """`done_reason` / `finish_reason`: `stop` or `length`."""
    pieces: int = 3
    """How many chunks the content is streamed in."""
    prompt_tokens: int = 12
    completion_tokens: int = 34
    load_ns: int = 0
    """0 is omitted from the final chunk, as Ollama does."""


@dataclass
class Status:
    status: int
    message: str


@dataclass
class MidStreamError:
    message: str
    partial: str = '{"source_document": "half'


@dataclass
class Drop:
    partial: str = '{"source_document": "half'


@dataclass
class Stall:
    seconds: float
    partial: str = ""


Behaviour = Reply | Status | MidStreamError | Drop | Stall


def _split(text: str, pieces: int) -> list[str]:
    if not text:
        return [""]
    size = max(1, -(-len(text) // max(1, pieces)))
    return [text[i:i + size] for i in range(0, len(text), size)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    # plumbing -----------------------------------------------------------------------------------
    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: str) -> None:
        raw = data.encode()
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        try:
            import socket

            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.server.fake.handle(self, "GET", self.path, {})

    def do_POST(self) -> None:  # noqa: N802
        self.server.fake.handle(self, "POST", self.path, self._body())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: "FakeServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client closing its keep-alive connection is normal; print anything else as the base class does."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class FakeServer:
    """Base: a threaded loopback HTTP server with a script of behaviours and a log of requests."""

    def __init__(self, default: Callable[[dict[str, Any]], Behaviour] | None = None):
        self.script: deque[Behaviour] = deque()
        self.default = default or (lambda body: Reply('{"ok": true}'))
        self.requests: list[tuple[str, str, dict[str, Any], dict[str, str]]] = []
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def push(self, *behaviours: Behaviour) -> "FakeServer":
        self.script.extend(behaviours)
        return self

    def next_behaviour(self, body: dict[str, Any]) -> Behaviour:
        with self._lock:
            return self.script.popleft() if self.script else self.default(body)

    def chat_requests(self) -> list[dict[str, Any]]:
        return [body for _, path, body, _ in self.requests if path.endswith("/chat") or path.endswith("/completions")]

    def __enter__(self) -> "FakeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wake.set()
        self._server.shutdown()
        self._server.server_close()

    def handle(self, h: _Handler, method: str, path: str, body: dict[str, Any]) -> None:
        self.requests.append((method, path, body, dict(h.headers)))
        self.route(h, method, path, body)

    def route(self, h: _Handler, method: str, path: str, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def go_wrong_mid_stream(self, h: _Handler, b: Behaviour, write: Callable[[Any], None], *,
                            partial: Callable[[str], Any], error: Callable[[str], Any]) -> None:
        """The rest of a begun stream for a failing behaviour: its `partial` answer (written as the server's
        chunk for that text), then an error object (`MidStreamError`), a closed connection (`Drop`) or
        silence until `Stall.seconds` pass (or the server stops) and then a closed connection."""
        if getattr(b, "partial", ""):
            write(partial(b.partial))
        if isinstance(b, MidStreamError):
            write(error(b.message))
            return h._end_stream()
        if isinstance(b, Drop):
            return h._drop()
        if isinstance(b, Stall):
            self.wake.wait(b.seconds)
            return h._drop()


class FakeOllama(FakeServer):
    """Speaks Ollama's `/api/*`. `models` are the names it has; others get a 404 like the real server."""

    def __init__(self, default: Callable[[dict[str, Any]], Behaviour] | None = None,
                 models: tuple[str, ...] = ("qwen3:8b",)):
        super().__init__(default)
        self.models = set(models)
        self.loaded: dict[str, int] = {m: 5_000_000_000 for m in models}
        self.unloaded: list[str] = []

    def route(self, h: _Handler, method: str, path: str, body: dict[str, Any]) -> None:
        if path == "/api/ps":
            return h._json(200, {"models": [{"name": m, "model": m, "size": s, "size_vram": s, "digest": "x",
                                             "expires_at": "2026-11-01T00:00:00Z", "context_length": 8192}
                                            for m, s in self.loaded.items()]})
        model = body.get("model", "")
        if model not in self.models:
            return h._json(404, {"error": f"model '{model}' not found"})
        if path == "/api/show":
            return h._json(200, {"details": {"family": "qwen3", "parameter_size": "8.2B",
                                             "quantization_level": "Q4_K_M"},
                                 "model_info": {"general.parameter_count": 8_190_735_360,
                                                "qwen3.context_length": 40960},
                                 "capabilities": ["completion", "thinking"]})
        if path == "/api/generate" and body.get("keep_alive") == 0:
            self.unloaded.append(model)
            self.loaded.pop(model, None)
            return h._json(200, {"model": model, "created_at": "2026-11-01T00:00:00Z", "response": "",
                                 "done": True, "done_reason": "unload"})
        if path != "/api/chat":
            return h._json(404, {"error": "404 page not found"})
        self._chat(h, body, self.next_behaviour(body))

    def _chat(self, h: _Handler, body: dict[str, Any], b: Behaviour) -> None:
        model = body["model"]
        if isinstance(b, Status):
            return h._json(b.status, {"error": b.message})
        if isinstance(b, Reply):
            final = {"model": model, "created_at": "2026-11-01T00:00:00Z", "message": {"role": "assistant", "content": ""},
                     "done": True, "done_reason": b.finish, "total_duration": 2_000_000_000,
                     "prompt_eval_count": b.prompt_tokens, "prompt_eval_duration": 100_000_000,
                     "eval_count": b.completion_tokens, "eval_duration": 1_500_000_000}
            if b.load_ns:
                final["load_duration"] = b.load_ns
            if body.get("stream", True) is False:
                message = {"role": "assistant", "content": b.content}
                if b.thinking:
                    message["thinking"] = b.thinking
                return h._json(200, {**final, "message": message})
            h._start_stream("application/x-ndjson")
            if b.thinking:
                h._chunk(json.dumps({"model": model, "message": {"role": "assistant", "content": "",
                                                                 "thinking": b.thinking}, "done": False}) + "\n")
            for piece in _split(b.content, b.pieces):
                h._chunk(json.dumps({"model": model, "created_at": "2026-11-01T00:00:00Z",
                                     "message": {"role": "assistant", "content": piece}, "done": False}) + "\n")
            h._chunk(json.dumps(final) + "\n")
            return h._end_stream()
        h._start_stream("application/x-ndjson")
        self.go_wrong_mid_stream(
            h, b, lambda obj: h._chunk(json.dumps(obj) + "\n"),
            partial=lambda text: {"model": model, "message": {"role": "assistant", "content": text},
                                  "done": False},
            error=lambda message: {"error": message})


class FakeOpenAI(FakeServer):
    """Speaks `/v1/chat/completions` (SSE when `stream` is true)."""

    def __init__(self, default: Callable[[dict[str, Any]], Behaviour] | None = None,
                 models: tuple[str, ...] = ("qwen3:8b",)):
        super().__init__(default)
        self.models = set(models)

    def route(self, h: _Handler, method: str, path: str, body: dict[str, Any]) -> None:
        if path != "/v1/chat/completions":
            return h._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        if body.get("model") not in self.models:
            return h._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                           "type": "invalid_request_error", "code": "model_not_found"}})
        b = self.next_behaviour(body)
        if isinstance(b, Status):
            return h._json(b.status, {"error": {"message": b.message, "type": "server_error", "code": None}})
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1790000000, "model": body["model"]}
        usage = None
        if isinstance(b, Reply):
            usage = {"prompt_tokens": b.prompt_tokens, "completion_tokens": b.completion_tokens,
                     "total_tokens": b.prompt_tokens + b.completion_tokens}
        if isinstance(b, Reply) and not body.get("stream"):
            message = {"role": "assistant", "content": b.content}
            if b.thinking:
                message["reasoning_content"] = b.thinking
            return h._json(200, {**base, "object": "chat.completion", "usage": usage,
                                 "choices": [{"index": 0, "message": message, "finish_reason": b.finish}]})
        h._start_stream("text/event-stream")

        def event(obj: Any) -> None:
            h._chunk(f"data: {json.dumps(obj)}\n\n")

        event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        if isinstance(b, Reply):
            if b.thinking:
                event({**base, "choices": [{"index": 0, "delta": {"reasoning_content": b.thinking}, "finish_reason": None}]})
            for piece in _split(b.content, b.pieces):
                event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": b.finish}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                event({**base, "choices": [], "usage": usage})
            h._chunk("data: [DONE]\n\n")
            return h._end_stream()
        self.go_wrong_mid_stream(
            h, b, event,
            partial=lambda text: {**base, "choices": [{"index": 0, "delta": {"content": text},
                                                       "finish_reason": None}]},
            error=lambda message: {"error": {"message": message, "type": "server_error"}})
