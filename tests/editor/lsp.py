"""A small Language Server Protocol client: runs the real yaml-language-server (tests/editor's
package-lock.json) over stdio and asks it what an editor asks (completion, diagnostics)."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, Any

HERE = Path(__file__).resolve().parent
SERVER = HERE / "node_modules" / "yaml-language-server" / "bin" / "yaml-language-server"
TIMEOUT_SECONDS = 60
# What the client answers when the server asks for its settings (workspace/configuration).
SETTINGS: dict[str, Any] = {
    "yaml": {"validate": True, "completion": True, "hover": True, "schemaStore": {"enable": False}}
}


def missing() -> str | None:
    """What driving the server needs that is not installed, said as what to install; None if nothing."""
    needs = []
    if shutil.which("node") is None:
        needs.append("Node.js (`apt-get install -y --no-install-recommends nodejs npm`)")
    if not SERVER.is_file():
        needs.append("the yaml-language-server npm package (`npm ci --prefix tests/editor`)")
    return "needs " + " and ".join(needs) if needs else None


def _write(stream: IO[bytes], message: dict[str, Any]) -> None:
    body = json.dumps(message).encode("utf-8")
    stream.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    stream.flush()


def _read(stream: IO[bytes]) -> dict[str, Any] | None:
    length = None
    while True:
        line = stream.readline()
        if not line:
            return None
        line = line.strip()
        if not line:
            break
        name, _, value = line.decode("ascii").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    if length is None:
        return None
    message: dict[str, Any] = json.loads(stream.read(length))
    return message


class LanguageServer:
    """One yaml-language-server process, initialised; use it as a context manager."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.process = subprocess.Popen(
            ["node", str(SERVER), "--stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.next_id = 0
        self.responses: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.diagnostics: dict[str, list[Any]] = {}
        self.diagnostics_seen = threading.Condition()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()
        self.request(
            "initialize",
            {
                "processId": None,
                "rootUri": root.as_uri(),
                "capabilities": {
                    "workspace": {"configuration": True},
                    "textDocument": {
                        "completion": {"completionItem": {"snippetSupport": True}},
                        "publishDiagnostics": {},
                    },
                },
            },
        )
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration", {"settings": SETTINGS})

    def __enter__(self) -> LanguageServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            if self.process.poll() is None:
                self.request("shutdown", None)
                self.notify("exit", None)
                self.process.wait(timeout=TIMEOUT_SECONDS)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        with self.lock:
            _write(self.process.stdin, {"jsonrpc": "2.0", **message})

    def _read_loop(self) -> None:
        assert self.process.stdout is not None
        while (message := _read(self.process.stdout)) is not None:
            if "method" in message and "id" in message:  # a request from the server
                self._send({"id": message["id"], "result": self._answer(message)})
            elif "method" in message:
                if message["method"] == "textDocument/publishDiagnostics":
                    with self.diagnostics_seen:
                        params = message["params"]
                        self.diagnostics[params["uri"]] = params["diagnostics"]
                        self.diagnostics_seen.notify_all()
            elif isinstance(message.get("id"), int) and message["id"] in self.responses:
                self.responses[message["id"]].put(message)

    def _answer(self, request: dict[str, Any]) -> Any:
        if request["method"] == "workspace/configuration":
            items = request["params"]["items"]
            return [SETTINGS.get(item.get("section", "")) for item in items]
        return None

    def notify(self, method: str, params: Any) -> None:
        self._send({"method": method, "params": params})

    def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        answer: queue.Queue[dict[str, Any]] = queue.Queue()
        self.responses[self.next_id] = answer
        self._send({"id": self.next_id, "method": method, "params": params})
        try:
            response = answer.get(timeout=TIMEOUT_SECONDS)
        except queue.Empty:
            raise TimeoutError(f"yaml-language-server did not answer {method}") from None
        if "error" in response:
            raise RuntimeError(f"{method}: {response['error']}")
        return response.get("result")

    def open(self, path: Path, text: str) -> str:
        """Open `text` as the document at `path` (not written to disk); its URI."""
        uri = path.as_uri()
        with self.diagnostics_seen:
            self.diagnostics.pop(uri, None)
        self.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": "yaml", "version": 1, "text": text}},
        )
        return uri

    def completion_labels(self, uri: str, line: int, character: int) -> set[str]:
        result = self.request(
            "textDocument/completion",
            {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}},
        )
        items = result.get("items", []) if isinstance(result, dict) else result or []
        return {str(item["label"]) for item in items}

    def wait_for_diagnostics(self, uri: str) -> list[dict[str, Any]]:
        """The diagnostics the server publishes for `uri` after it was opened."""
        with self.diagnostics_seen:
            if not self.diagnostics_seen.wait_for(
                lambda: uri in self.diagnostics, timeout=TIMEOUT_SECONDS
            ):
                raise TimeoutError(f"yaml-language-server published no diagnostics for {uri}")
            return list(self.diagnostics[uri])
