"""The labelling web server: one page, a small JSON API, the query set's clips, a label store.

Routes::

    GET  /                          the labelling page
    GET  /api/next?labeller=NAME    the next query NAME has not labelled (null when done) + progress
    GET  /api/progress[?labeller=]  {"labelled": k, "total": N}
    POST /api/label                 {"query_id", "choice", "labeller"} -> 201 {"label", "progress"}
    POST /api/undo                  {"labeller"} -> {"undone", "query", "progress"}
    GET  /clips/<k>                 the k-th clip of the manifest (video/mp4, Range requests)

Every label is committed to SQLite before the reply goes out, so a killed server loses nothing
and a restarted one resumes where each labeller was. Bad requests get a 4xx JSON
``{"error": reason}`` and write nothing. Clips are addressed by their index in the manifest, so
no part of a URL ever becomes a file path.
"""

from __future__ import annotations

import json
import socket
import sys
import warnings
import webbrowser
from collections.abc import Callable
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from vla_gym.training.label_store import (
    CHOICES,
    DuplicateLabelError,
    Label,
    LabelError,
    LabelStore,
    UnknownQueryError,
)
from vla_gym.training.query_files import Query, read_manifest

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 16 * 1024
LABEL_FIELDS: dict[str, type] = {"query_id": str, "choice": str, "labeller": str}
UNDO_FIELDS: dict[str, type] = {"labeller": str}


class HttpError(Exception):
    """A request refused with ``status`` and a reason the page can show."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class LabellingApp:
    """The query set, the clips it may serve, and the label store behind the API."""

    def __init__(self, queries: str | Path, db: str | Path, env_id: str | None = None) -> None:
        self.queries_dir = Path(queries)
        self.manifest = read_manifest(self.queries_dir, env_id=env_id)
        self.clip_paths = self.manifest.clip_paths()
        self._clip_index = {clip: k for k, clip in enumerate(self.clip_paths)}
        self._position = {q.id: k for k, q in enumerate(self.manifest.queries)}
        self.store = LabelStore(db, query_ids=self._position)
        self.page = resources.files(__package__).joinpath("page.html").read_bytes()

    def next_query(self, labeller: str) -> dict[str, Any]:
        done = self.store.labelled_ids(labeller)
        pending = next((q for q in self.manifest.queries if q.id not in done), None)
        return {"query": self._query_view(pending), "progress": self.progress(labeller)}

    def progress(self, labeller: str | None = None) -> dict[str, int]:
        done = self.store.labelled_ids(labeller) & self._position.keys()
        return {"labelled": len(done), "total": len(self.manifest.queries)}

    def label(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            label = self.store.add(body["query_id"], body["choice"], body["labeller"])
        except DuplicateLabelError as exc:
            raise HttpError(HTTPStatus.CONFLICT, str(exc)) from None
        except UnknownQueryError as exc:
            raise HttpError(HTTPStatus.NOT_FOUND, str(exc)) from None
        except LabelError as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        return {"label": asdict(label), "progress": self.progress(label.labeller)}

    def undo(self, body: dict[str, Any]) -> dict[str, Any]:
        labeller = _check_labeller(body["labeller"])
        undone: Label | None = self.store.undo(labeller)
        query = None if undone is None else self._query_by_id(undone.query_id)
        return {"undone": None if undone is None else asdict(undone),
                "query": self._query_view(query), "progress": self.progress(labeller)}

    def clip_file(self, index: int) -> Path:
        if not 0 <= index < len(self.clip_paths):
            raise HttpError(HTTPStatus.NOT_FOUND, f"no clip {index}")
        path = self.queries_dir / self.clip_paths[index]
        if not path.is_file():  # removed since the server started
            raise HttpError(HTTPStatus.NOT_FOUND, f"clip {self.clip_paths[index]} is missing")
        return path

    def close(self) -> None:
        self.store.close()

    def _query_by_id(self, query_id: str) -> Query | None:
        position = self._position.get(query_id)
        return None if position is None else self.manifest.queries[position]

    def _query_view(self, query: Query | None) -> dict[str, Any] | None:
        if query is None:
            return None
        return {"id": query.id, "instruction": query.instruction,
                "number": self._position[query.id] + 1,
                "left": f"/clips/{self._clip_index[query.left.clip]}",
                "right": f"/clips/{self._clip_index[query.right.clip]}"}


class LabellingServer(ThreadingHTTPServer):
    """A threaded HTTP server holding a ``LabellingApp``; ``url`` says where it listens."""

    daemon_threads = True

    def __init__(self, app: LabellingApp, host: str = "127.0.0.1", port: int = 8765) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.app = app
        self.host = host
        super().__init__((host, port), LabellingHandler)

    @property
    def url(self) -> str:
        port = self.server_address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that stops a video download mid-way closes its socket; that is not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        self.app.close()


class LabellingHandler(BaseHTTPRequestHandler):
    server: LabellingServer
    server_version = "vla-gym-label/1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._respond(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._respond(self._post)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: a labelling session makes many requests; refusals reach the page."""

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        super().log_message(format, *args)

    def _respond(self, route: Callable[[str, dict[str, list[str]]], None]) -> None:
        url = urlsplit(self.path)
        try:
            self._check_host()
            route(url.path, parse_qs(url.query))
        except HttpError as exc:
            self._send_json({"error": exc.reason}, exc.status)
        except Exception as exc:  # a bug or a failing disk: say so rather than drop the line
            self.log_error("%s %s failed: %r", self.command, url.path, exc)
            self._send_json({"error": f"server error: {exc}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _get(self, path: str, params: dict[str, list[str]]) -> None:
        app = self.server.app
        if path in ("/", "/index.html"):
            self._send_bytes(app.page, "text/html; charset=utf-8")
        elif path == "/api/next":
            self._send_json(app.next_query(_check_labeller(_param(params, "labeller"))))
        elif path == "/api/progress":
            labeller = params.get("labeller", [None])[0]
            self._send_json(app.progress(labeller))
        elif path.startswith("/clips/") and path[len("/clips/"):].isdigit():
            self._send_file(app.clip_file(int(path[len("/clips/"):])), "video/mp4")
        elif path.startswith("/api/"):
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED if path in ("/api/label", "/api/undo")
                            else HTTPStatus.NOT_FOUND, f"GET {path} is not part of the API")
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, f"nothing at {path}")

    def _post(self, path: str, params: dict[str, list[str]]) -> None:
        app = self.server.app
        if path == "/api/label":
            self._send_json(app.label(self._read_json(LABEL_FIELDS)), HTTPStatus.CREATED)
        elif path == "/api/undo":
            self._send_json(app.undo(self._read_json(UNDO_FIELDS)))
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, f"POST {path} is not part of the API")

    def _check_host(self) -> None:
        # Served on localhost, the page must be reached as localhost: this stops another web site
        # from reaching it by pointing its own domain name at 127.0.0.1 (DNS rebinding).
        if self.server.host not in LOCAL_HOSTS:
            return
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if host not in LOCAL_HOSTS:
            raise HttpError(HTTPStatus.FORBIDDEN, f"unexpected Host header {host!r}; open the "
                                                  "page as http://127.0.0.1:PORT/")

    def _read_json(self, fields: dict[str, type]) -> dict[str, Any]:
        # Requiring a JSON content type makes a browser ask before a cross-site post (CORS
        # preflight, which this server never grants), so other web pages cannot post labels.
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/json":
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                            f"expected Content-Type: application/json, got {content_type!r}")
        body = _parse_body(self.rfile.read(self._content_length()))
        return _check_fields(body, fields)

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.isdigit():
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "expected a Content-Length header")
        if int(raw) > MAX_BODY_BYTES:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"body of {raw} bytes; at most {MAX_BODY_BYTES} accepted")
        return int(raw)

    def _send_json(self, payload: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send_bytes(json.dumps(payload).encode(), "application/json", status)

    def _send_bytes(self, data: bytes, content_type: str,
                    status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _send_file(self, path: Path, content_type: str) -> None:
        """The file, or the one byte range asked for (browsers seek and loop videos by range)."""
        size = path.stat().st_size
        span = _byte_range(self.headers.get("Range"), size)
        start, end = span if span is not None else (0, size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if span else HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if span is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with path.open("rb") as file:  # clips are short: one read is fine
            file.seek(start)
            data = file.read(end - start + 1)
        try:
            self.wfile.write(data)
        except ConnectionError:
            pass  # the browser has what it wanted, or gave up on the clip


def make_labelling_server(queries: str | Path, db: str | Path, host: str = "127.0.0.1",
                          port: int = 8765, env_id: str | None = None) -> LabellingServer:
    """A server bound to ``host:port`` (0: a free port), not yet serving.

    Raises ``QueryFileError`` for a bad query set (or one made for another env than
    ``env_id``), ``LabelError`` for a bad database and ``OSError`` when the port is taken."""
    if host not in LOCAL_HOSTS:
        warnings.warn(f"serving the labelling page on {host}: anyone who can reach this "
                      "machine can read the clips and post labels (there is no login)",
                      stacklevel=2)
    app = LabellingApp(queries, db, env_id=env_id)
    try:
        return LabellingServer(app, host, port)
    except BaseException:
        app.close()
        raise


def serve_labelling(queries: Path, db: Path, host: str = "127.0.0.1", port: int = 8765,
                    env_id: str | None = None, open_browser: bool = False,
                    log: Callable[[str], None] = print) -> None:
    """Serve the labelling page until Ctrl-C; labels are in ``db`` as soon as they are given."""
    server = make_labelling_server(queries, db, host=host, port=port, env_id=env_id)
    total = len(server.app.manifest.queries)
    log(f"labelling {total} queries from {queries} into {db}")
    log(f"open {server.url} (Ctrl-C to stop; every label is already saved)")
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log(f"stopped; {len(server.app.store.labels())} label(s) in {db}")
    finally:
        server.server_close()


def _param(params: dict[str, list[str]], name: str) -> str:
    values = params.get(name)
    if not values:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"missing query parameter {name!r}")
    return values[0]


def _check_labeller(labeller: str) -> str:
    if not labeller.strip():
        raise HttpError(HTTPStatus.BAD_REQUEST, "labeller must be a non-empty name")
    return labeller


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HttpError(HTTPStatus.BAD_REQUEST,
                        f"body must be a JSON object, got {type(body).__name__}")
    return body


def _check_fields(body: dict[str, Any], fields: dict[str, type]) -> dict[str, Any]:
    missing = [name for name in fields if name not in body]
    unexpected = sorted(set(body) - set(fields))
    if missing or unexpected:
        raise HttpError(HTTPStatus.BAD_REQUEST,
                        f"expected fields {sorted(fields)}; missing {missing}, "
                        f"unexpected {unexpected}")
    for name, kind in fields.items():
        if not isinstance(body[name], kind):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"field {name!r} must be a "
                            f"{kind.__name__}, got {type(body[name]).__name__}")
    if "choice" in fields and body["choice"] not in CHOICES:
        raise HttpError(HTTPStatus.BAD_REQUEST,
                        f"choice must be one of {list(CHOICES)}, got {body['choice']!r}")
    return body


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=`` range, None for the whole file."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None  # no range, or several: the whole file is a valid answer to either
    first, _, last = header[len("bytes="):].strip().partition("-")
    try:
        if first:
            start, end = int(first), int(last) if last else size - 1
        else:
            start, end = max(size - int(last), 0), size - 1  # "-N": the last N bytes
    except ValueError:
        return None
    if start >= size or start > end:
        raise HttpError(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                        f"range {header!r} outside a file of {size} bytes")
    return start, min(end, size - 1)
