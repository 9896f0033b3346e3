"""A real headless Chromium driven through Debian's chromedriver with plain WebDriver HTTP
calls (no Selenium, nothing downloaded). Missing Chromium skips a test on a developer's
machine and fails it under CI."""
from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.services import require

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1500,900",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_chromium() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    if not chromium or not driver:
        require("Chromium", RuntimeError("apt-get install chromium chromium-driver"))
    return chromium, driver  # type: ignore[return-value]


class Browser:
    """One chromedriver process and one browser session with a fresh profile."""

    def __init__(self) -> None:
        chromium, driver = find_chromium()
        self.profile = tempfile.mkdtemp(prefix="gt-chromium-")
        self.port = free_port()
        self.driver = subprocess.Popen([driver, f"--port={self.port}", "--allowed-ips=127.0.0.1"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if self._call("GET", "/status")["value"]["ready"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        capabilities = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"performance": "ALL"},
            "goog:chromeOptions": {"binary": chromium, "args": CHROMIUM_FLAGS + [f"--user-data-dir={self.profile}"]},
        }}}
        self.session = self._call("POST", "/session", capabilities)["value"]["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 60) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"WebDriver {method} {path}: {exc.read().decode(errors='replace')[:500]}") from None

    def command(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)["value"]

    def cdp(self, cmd: str, **params: Any) -> Any:
        return self.command("POST", "/goog/cdp/execute", {"cmd": cmd, "params": params})

    def basic_auth(self, user: str, password: str) -> None:
        """Send `Authorization: Basic ...` with every request of this session (page and XHR)."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.cdp("Network.enable")
        self.cdp("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})

    def get(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def run_async(self, script: str, *args: Any) -> Any:
        """`script` ends by calling `arguments[arguments.length - 1](result)`."""
        return self.command("POST", "/execute/async", {"script": script, "args": list(args)})

    def responses(self) -> dict[str, int]:
        """URL -> HTTP status of the responses the browser received since the last call."""
        seen: dict[str, int] = {}
        for entry in self.command("POST", "/se/log", {"type": "performance"}):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.responseReceived":
                response = message["params"]["response"]
                seen[response["url"]] = response["status"]
        return seen

    def text(self) -> str:
        return self.run("return document.body ? document.body.innerText : '';")

    def wait_for(self, script: str, timeout: float = 30, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.run(script)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"{what} not seen in the browser after {timeout} s; page text:\n{self.text()[:2000]}")

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))
        return path

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}", timeout=20)
        except Exception:  # noqa: BLE001 - the driver is killed below anyway
            pass
        self.driver.terminate()
        try:
            self.driver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.driver.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
