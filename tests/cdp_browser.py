"""A headless Chromium driven over the Chrome DevTools protocol (CDP): enough to open the Prefect UI, click, wait
for the DOM, read values out of it and take screenshots.

The system `chromium` (Debian's package, installed by `.ci/run`) is started with `--remote-debugging-port=0`;
Chromium writes the port it chose to `<profile>/DevToolsActivePort`, and the page target's websocket is found
through `/json/list`. The websocket client is `websockets` (a Prefect dependency). Playwright is not used: its
own browser download cannot work offline.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class CdpError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, executable: str, profile_dir: Path, width: int = 1400, height: int = 1000):
        self.executable, self.profile_dir = executable, Path(profile_dir)
        self.size = (width, height)
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen | None = None
        self._ws = None

    def __enter__(self) -> "Browser":
        from websockets.sync.client import connect

        self.profile_dir.mkdir(parents=True, exist_ok=True)
        active = self.profile_dir / "DevToolsActivePort"
        active.unlink(missing_ok=True)  # a stale one from an earlier browser names a dead port
        args = [self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                f"--user-data-dir={self.profile_dir}", "--remote-debugging-port=0",
                f"--window-size={self.size[0]},{self.size[1]}", "about:blank"]
        log = open(self.profile_dir / "chromium.log", "wb")
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while not (active.is_file() and active.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise CdpError("chromium did not start: " + (self.profile_dir / "chromium.log").read_text()[-2000:])
            time.sleep(0.2)
        port = int(active.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                  deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._ws is not None:
                self._ws.close()
        finally:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=20)

    def send(self, method: str, timeout_s: float = 60, **params: Any) -> dict:
        """One CDP command; events that arrive meanwhile are dropped (the tests poll the DOM instead)."""
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise CdpError(f"{method}: {message['error']}")
                return message.get("result", {})

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression[:80]}: {result['exceptionDetails'].get('text')} "
                           f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float = 60, what: str = "") -> Any:
        """Poll until `expression` is truthy; returns its value, or raises with the page's text."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText.slice(0, 1500) : ''")
                raise CdpError(f"timed out after {timeout_s:.0f} s waiting for {what or expression}; page text:\n{text}")
            time.sleep(0.5)

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = self.send("Page.getLayoutMetrics")
            size = metrics["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": self.size[0],
                                                            "height": min(int(size["height"]), 6000), "scale": 1})
        data = self.send("Page.captureScreenshot", **params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
