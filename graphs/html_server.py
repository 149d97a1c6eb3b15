"""``circuits view DIR``: serve a trace's output folder on localhost, in a thread, and open its graph.

The folder is served read-only (the standard library's ``http.server``; only GET and HEAD), on
127.0.0.1 so nothing outside this machine reaches it. ``graph.html`` is what opens. A folder
written before the page existed has only ``graph.json``: its page is rendered from that file in
memory and served as ``graph.html``; nothing is written into the folder.
"""

from __future__ import annotations

import functools
import http.server
import threading
import webbrowser
from pathlib import Path
from typing import Any

from graphs.graph import read_viewer_json
from graphs.html import to_html

PAGE, DATA = "graph.html", "graph.json"


class ViewerFolderError(FileNotFoundError):
    """A folder ``circuits view`` cannot serve: missing, or without a graph."""


class ViewerServer:
    """A local server for ``directory`` on ``port`` (0: any free one), running in a daemon thread.

    Use as a context manager, or call ``close()``; ``url`` is the page's address.
    """

    def __init__(self, directory: str | Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ViewerFolderError(f"no folder at {self.directory}. Fix: pass the --out folder of a `circuits trace` "
                                    "run (it holds graph.html).")
        if not (self.directory / PAGE).is_file() and not (self.directory / DATA).is_file():
            raise ViewerFolderError(f"{self.directory} holds neither {PAGE} nor {DATA}. Fix: pass the --out folder of a "
                                    "`circuits trace` run, or write one with graphs.write_html(graph, path).")
        handler = functools.partial(_Handler, directory=str(self.directory))
        try:
            self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ViewerFolderError(f"cannot listen on {host}:{port} ({exc.strerror or exc}). Fix: pass another --port, or 0 "
                          "for any free one.") from exc
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="circuits-view", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}/{PAGE}"

    def open(self) -> bool:
        """Open the page in the user's browser (``webbrowser``); False if no browser could be started."""
        return webbrowser.open(self.url)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files of the folder; ``graph.html`` rendered from ``graph.json`` when the folder has no page."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path.split("?", 1)[0].lstrip("/") == PAGE and not (Path(self.directory) / PAGE).is_file():
            body = _page_from_json(Path(self.directory) / DATA).encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # a request line per file on stderr would bury the one line that says where the page is


@functools.lru_cache(maxsize=4)
def _page_from_json_cached(path: str, mtime_ns: int) -> str:
    graph = read_viewer_json(path)
    return to_html(graph)


def _page_from_json(path: Path) -> str:
    return _page_from_json_cached(str(path), path.stat().st_mtime_ns)
