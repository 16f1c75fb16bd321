"""A headless Chromium driven through chromedriver's W3C WebDriver protocol (JSON over HTTP, no client library):
open a page, run a script in it, take a screenshot."""

import json
import socket
import subprocess
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    def __init__(self, browser: str, driver: str):
        self.browser, self.driver = browser, driver
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.proc = subprocess.Popen([self.driver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                self._call("GET", "/status")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        options = {"binary": self.browser, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                                   "--disable-dev-shm-usage", "--window-size=1280,2000"]}
        session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})
        self.session = session["sessionId"]
        return self

    def __exit__(self, *exc):
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read()).get("value") or {}

    def open(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def script(self, source: str):
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": source, "args": []})

    def screenshot(self) -> str:
        """The viewport as a base64 PNG."""
        return self._call("GET", f"/session/{self.session}/screenshot")
