"""A local HTTP server that answers file requests the way the Hugging Face Hub does, for `vcraft download`
tests through HF_ENDPOINT: HEAD and GET on /<repo>/resolve/<revision>/<file> with the Hub's headers (the
commit, the file's sha256 as its ETag, its size), byte ranges for resumed transfers, and its error codes.

Faults on request: `cut_at` sends the first full-file GET only up to that byte and drops the connection;
`corrupt` serves other bytes than the ETag promises. `requests` records (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")


@dataclass
class FakeHub:
    files: dict[tuple[str, str], bytes]  # (repo, file) -> contents
    cut_at: int | None = None
    corrupt: bool = False
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def gets(self) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET"]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range")))
            match = RESOLVE.match(self.path)
            if match is None or not any(repo == match["repo"] for repo, _ in hub.files):
                return self._error(401, "RepoNotFound", "Repository not found")
            data = hub.files.get((match["repo"], match["file"]))
            if data is None:
                return self._error(404, "EntryNotFound", "Entry not found")
            etag = hashlib.sha256(data).hexdigest()
            if hub.corrupt:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            start = int(re.match(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-"))[1])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if hub.cut_at is not None and start == 0:
                self.wfile.write(data[:hub.cut_at])
                self.wfile.flush()
                hub.cut_at = None  # only the first transfer breaks off
                self.close_connection = True
                return
            self.wfile.write(data[start:])

        def _error(self, status: int, code: str, message: str) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def serve(hub: FakeHub) -> ThreadingHTTPServer:
    """Start serving `hub` on a free localhost port in a background thread; sets `hub.url`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
