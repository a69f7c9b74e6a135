"""TEST-ONLY fake of the Hugging Face Hub HTTP API, served on loopback from memory.

THIS IS A TEST SERVER. It is not the Hugging Face Hub, it is not secure (tokens are compared in clear text,
nothing is persisted, every repo belongs to one fake user) and it must never be used outside of the test suite.

It speaks the subset of the Hub HTTP API that the *real, unpatched* ``huggingface_hub`` client (2.4.0, with
``HF_HUB_DISABLE_XET=1``) uses to create repos, upload (regular + Git LFS "basic" transfer) and download, so
that publishing code can be tested end to end with ``HF_ENDPOINT=http://127.0.0.1:PORT``::

    from hub_server import HubTestServer, use_hub_server

    def test_publish(monkeypatch, tmp_path):
        with HubTestServer() as server:
            use_hub_server(monkeypatch, server, cache_dir=tmp_path / "hf-cache")
            my_publish_function(...)  # uses huggingface_hub as usual
            assert server.repos["test-user/my-model"]["private"] is True

Public API
----------
``HubTestServer(valid_tokens=None, read_only_tokens=None, *, username="test-user", ...)``
    Context manager (or ``start()`` / ``stop()``). Attributes:

    - ``endpoint``: e.g. ``"http://127.0.0.1:54321"`` (set once started).
    - ``repos``: ``{repo_id: {"private": bool, "files": {path: bytes}, "commits": [...], ...}}``. ``files`` is the
      content of the head of ``main``; ``commits`` lists every commit, oldest first (the first one is the
      ``initial commit`` that adds ``.gitattributes``, like on the real Hub). Other keys: ``type``,
      ``lfs_files`` (paths of ``files`` stored with LFS), ``branches`` (``{name: commit oid}``), ``lfs_objects``.
    - ``requests``: list of ``(method, path, headers)`` tuples, in arrival order. ``path`` is the raw request
      target (with query string); ``headers`` is a dict with case-insensitive lookup. Each entry also has
      ``.method``, ``.path``, ``.headers``, ``.body`` (bytes), ``.json()`` and ``.status`` (status code sent back).
    - ``lfs_objects``: ``{sha256: bytes}`` of every LFS object uploaded.

    Methods: ``fail_next(n=1, status=500, path_contains="/commit/", *, method=None, headers=None)``,
    ``add_repo(repo_id, *, private=False, repo_type="model", files=None)`` (seed a repo without HTTP),
    ``find_requests(method=None, path_contains=None)``, ``clear_requests()``, ``is_lfs(repo_id, path)``,
    ``head_sha(repo_id, revision="main")``.

``use_hub_server(monkeypatch, server, *, token="hf_test_token", cache_dir=None)``
    Points the real ``huggingface_hub`` client (and therefore ``transformers``) at ``server`` for one test:
    sets ``HF_ENDPOINT`` / ``HF_HUB_DISABLE_XET=1`` / ``HF_TOKEN``, removes ``HF_HUB_OFFLINE`` and
    ``TRANSFORMERS_OFFLINE``, and patches the values ``huggingface_hub.constants`` read at import time
    (``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``, ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_XET``, ...) as well as the
    module-level ``HfApi`` behind ``huggingface_hub.create_repo`` & co. It never lets a developer's stored token
    leak to the server (``HF_TOKEN_PATH`` points to a missing file).

Auth model
----------
``Authorization: Bearer <token>``. A token in ``valid_tokens`` (default ``{"hf_test_token"}``) has write access,
one in ``read_only_tokens`` has read access (403 on writes). Any other bearer token gets 401 "Invalid credentials
in Authorization header" on every endpoint, like the real Hub. Without a token: 401 on writes, public repos are
readable, private repos answer 401 with ``X-Error-Code: RepoNotFound`` (the client raises
``RepositoryNotFoundError``).

Endpoints (what huggingface_hub 2.4.0 calls)
--------------------------------------------
- ``POST /api/repos/create`` (payload ``{"name", "organization", "visibility": "private"|"public", "type"}``;
  2.4.0 sends ``visibility``, the legacy ``private`` bool is accepted too). 409 if the repo exists.
- ``DELETE /api/repos/delete``, ``PUT /api/{type}s/{id}/settings``, ``GET /api/whoami-v2``,
  ``POST /api/validate-yaml`` (called for every README.md, twice per ``upload_folder``).
- ``GET /api/{type}s/{id}`` and ``/api/{type}s/{id}/revision/{rev}`` (``?blobs=True`` adds size/blobId/lfs).
- ``GET /api/{type}s/{id}/tree/{rev}[/{path}]?recursive=...`` (``list_repo_files`` = recursive tree listing),
  ``POST .../paths-info/{rev}``, ``GET .../refs``, ``GET .../commits/{rev}``, ``POST|DELETE .../branch/{name}``.
- ``POST /api/{type}s/{id}/preupload/{rev}``: answers ``uploadMode`` "lfs" for ``.safetensors/.bin/.png/.pt``
  files or files > 10 MB, "regular" otherwise, plus the ``oid`` of the file already at that path (sha256 for LFS,
  git blob sha1 for regular files): the client compares it to its local oid and drops unchanged files.
- ``POST /{prefix}{id}.git/info/lfs/objects/batch`` (basic transfer): upload href is a pre-signed style URL on
  this server (``PUT /_test_lfs_upload/{oid}?token=...``, the client sends it *without* auth headers), verify
  href is ``POST /{prefix}{id}.git/info/lfs/objects/verify``. Objects already uploaded get no ``actions``.
- ``POST /api/{type}s/{id}/commit/{rev}`` (NDJSON: ``header`` / ``file`` (base64) / ``lfsFile`` /
  ``deletedFile`` / ``deletedFolder`` lines; ``?create_pr=1`` supported). Answers ``commitOid``, ``commitUrl``,
  ``pullRequestUrl``.
- ``HEAD|GET /{prefix}{id}/resolve/{rev}/{path}``: 200 with ``X-Repo-Commit``, ``ETag`` (git blob sha1, or sha256
  for LFS files), ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS files, ``Content-Length``; ``Range`` supported.

Only the standard library is used at import time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_TOKEN = "hf_test_token"
DEFAULT_USERNAME = "test-user"
LFS_EXTENSIONS = (".safetensors", ".bin", ".png", ".pt")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # bytes: bigger files are LFS whatever their extension

GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.png filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)

_API_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_URL_PREFIX_TYPES = {"datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
_API_SUBPATHS = {"revision", "tree", "paths-info", "preupload", "commit", "commits", "refs", "settings", "branch"}


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob (what the Hub reports as ``oid``/``blobId``/``ETag`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Content of the Git LFS pointer file committed in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _HubError(Exception):
    """Raised inside handlers; turned into a JSON error response shaped like the Hub's."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class _CIDict(dict):
    """A dict of HTTP headers with case-insensitive lookups (keys are stored lower-cased)."""

    def __init__(self, items=()):
        super().__init__((str(k).lower(), v) for k, v in items)

    def __getitem__(self, key):
        return super().__getitem__(str(key).lower())

    def __contains__(self, key):
        return super().__contains__(str(key).lower())

    def get(self, key, default=None):
        return super().get(str(key).lower(), default)


class RecordedRequest(tuple):
    """One logged request: a ``(method, path, headers)`` 3-tuple with extra attributes.

    ``.body`` holds the raw request body, ``.status`` the status code the server answered (``None`` while the
    request is being handled), ``.json()`` decodes the body.
    """

    def __new__(cls, method: str, path: str, headers: dict, body: bytes):
        obj = super().__new__(cls, (method, path, headers))
        obj.body = body
        obj.status = None
        return obj

    method = property(lambda self: self[0])
    path = property(lambda self: self[1])
    headers = property(lambda self: self[2])

    def json(self):
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every response carries Content-Length
    server_version = "HubTestServer/1.0"
    timeout = 30  # idle keep-alive connections are dropped after this many seconds

    # -- plumbing ---------------------------------------------------------------------------------------------

    def setup(self):
        super().setup()
        self.server.hub._connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.hub._connections.discard(self.connection)

    def log_message(self, format, *args):  # noqa: A002 - signature imposed by BaseHTTPRequestHandler
        if self.server.hub.verbose:
            super().log_message(format, *args)

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        hub: HubTestServer = self.server.hub
        body = self._read_body()
        self._record = RecordedRequest(method, self.path, _CIDict(self.headers.items()), body)
        hub._log(self._record)
        try:
            failure = hub._take_failure(method, self.path)
            if failure is not None:
                raise _HubError(failure["status"], failure["message"], headers=failure["headers"])
            hub._route(self, method, body)
        except _HubError as err:
            self.send_json(err.status, {"error": err.message}, _error_headers(err))
        except Exception as exc:  # pragma: no cover - a bug in this test server
            traceback.print_exc(file=sys.stderr)
            self.send_json(500, {"error": f"HubTestServer internal error: {exc!r}"})

    # -- responses --------------------------------------------------------------------------------------------

    def send_bytes(
        self, status: int, data: bytes, headers: dict | None = None, content_type: str = "application/octet-stream"
    ) -> None:
        self._record.status = status
        self.send_response(status)
        all_headers = {"Content-Type": content_type, "Content-Length": str(len(data))}
        all_headers["X-Request-Id"] = f"hub-test-{id(self._record):x}"
        all_headers.update(headers or {})
        for key, value in all_headers.items():
            self.send_header(key, str(value))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    def send_json(self, status: int, payload, headers: dict | None = None) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), headers, content_type="application/json; charset=utf-8")


def _error_headers(err: _HubError) -> dict:
    headers = {"X-Error-Message": err.message}
    if err.code is not None:
        headers["X-Error-Code"] = err.code
    headers.update(err.headers)
    return headers


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: HubTestServer


class HubTestServer:
    """In-memory, loopback, TEST-ONLY implementation of the Hugging Face Hub HTTP API (see module docstring)."""

    def __init__(
        self,
        valid_tokens=None,
        read_only_tokens=None,
        *,
        username: str = DEFAULT_USERNAME,
        lfs_extensions=LFS_EXTENSIONS,
        lfs_threshold: int = LFS_SIZE_THRESHOLD,
        host: str = "127.0.0.1",
        verbose: bool = False,
    ):
        self.valid_tokens = set(valid_tokens) if valid_tokens is not None else {DEFAULT_TOKEN}
        self.read_only_tokens = set(read_only_tokens or ())
        self.username = username
        self.lfs_extensions = tuple(lfs_extensions)
        self.lfs_threshold = lfs_threshold
        self.host = host
        self.verbose = verbose
        self.endpoint: str | None = None
        self.repos: dict[str, dict] = {}
        self.requests: list[RecordedRequest] = []
        self.lfs_objects: dict[str, bytes] = {}
        self._upload_tokens: dict[str, tuple[str, str, int]] = {}
        self._failures: list[dict] = []
        self._lock = threading.RLock()
        self._counter = 0
        self._connections: set = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> HubTestServer:
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, 0), _Handler)
        httpd.hub = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self.endpoint = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="HubTestServer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        for conn in list(self._connections):  # drop keep-alive connections so handler threads end
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubTestServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- test helpers -----------------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        path_contains: str = "/commit/",
        *,
        method: str | None = None,
        headers: dict | None = None,
        message: str | None = None,
    ) -> None:
        """Make the next ``n`` requests whose raw path contains ``path_contains`` (and whose method is ``method``,
        if given) fail with ``status`` and a JSON ``{"error": ...}`` body, before any auth or processing.
        ``headers`` are added to those responses (e.g. ``{"Retry-After": "0"}``)."""
        with self._lock:
            self._failures.append(
                {
                    "remaining": n,
                    "status": status,
                    "path_contains": path_contains,
                    "method": method.upper() if method else None,
                    "headers": dict(headers or {}),
                    "message": message or f"Injected failure by HubTestServer.fail_next (HTTP {status})",
                }
            )

    @property
    def pending_failures(self) -> int:
        """Number of injected failures not consumed yet."""
        with self._lock:
            return sum(rule["remaining"] for rule in self._failures)

    def find_requests(self, method: str | None = None, path_contains: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper()) and (path_contains is None or path_contains in r.path)
            ]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def add_repo(
        self, repo_id: str, *, private: bool = False, repo_type: str = "model", files: dict | None = None
    ) -> dict:
        """Create a repo directly (no HTTP), optionally with ``files`` ``{path: bytes}`` committed on ``main``."""
        with self._lock:
            if repo_id in self.repos:
                raise ValueError(f"Repo {repo_id} already exists")
            repo = self._create_repo(repo_id, private=private, repo_type=repo_type)
            if files:
                head = repo["commits"][-1]
                new_files, new_lfs = dict(head["files"]), set(head["lfs_files"])
                for path, data in files.items():
                    new_files[path] = bytes(data)
                    if self._wants_lfs(path, len(data)):
                        sha = hashlib.sha256(data).hexdigest()
                        self.lfs_objects[sha] = bytes(data)
                        repo["lfs_objects"].add(sha)
                        new_lfs.add(path)
                    else:
                        new_lfs.discard(path)
                ops = [{"key": "file", "path": p} for p in files]
                self._add_commit(repo, "main", head["oid"], new_files, new_lfs, "Add files", "", ops)
            return repo

    def is_lfs(self, repo_id: str, path: str) -> bool:
        """Whether ``path`` is stored as an LFS file at the head of ``main``."""
        with self._lock:
            return path in self.repos[repo_id]["lfs_files"]

    def head_sha(self, repo_id: str, revision: str = "main") -> str:
        with self._lock:
            return self.repos[repo_id]["branches"][revision]

    # -- internals: state -------------------------------------------------------------------------------------

    def _log(self, record: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(record)

    def _take_failure(self, method: str, path: str) -> dict | None:
        with self._lock:
            for rule in self._failures:
                if rule["remaining"] <= 0:
                    continue
                if rule["method"] is not None and rule["method"] != method:
                    continue
                if rule["path_contains"] and rule["path_contains"] not in path:
                    continue
                rule["remaining"] -= 1
                return rule
            return None

    def _wants_lfs(self, path: str, size: int) -> bool:
        return path.lower().endswith(self.lfs_extensions) or size > self.lfs_threshold

    def _new_oid(self, *parts) -> str:
        self._counter += 1
        seed = "\0".join(str(p) for p in (*parts, self._counter, time.time_ns()))
        return hashlib.sha1(seed.encode()).hexdigest()

    def _create_repo(self, repo_id: str, *, private: bool, repo_type: str) -> dict:
        now = time.time()
        repo = {
            "id": repo_id,
            "type": repo_type,
            "private": bool(private),
            "files": {},
            "lfs_files": set(),
            "commits": [],
            "branches": {},
            "lfs_objects": set(),
            "created_at": now,
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "pr_count": 0,
        }
        self.repos[repo_id] = repo
        ops = [{"key": "file", "path": ".gitattributes"}]
        self._add_commit(repo, "main", None, {".gitattributes": GITATTRIBUTES}, set(), "initial commit", "", ops)
        return repo

    def _add_commit(self, repo, branch, parent, files, lfs_files, title, message, operations) -> dict:
        oid = self._new_oid(repo["id"], parent, title)
        commit = {
            "oid": oid,
            "parents": [parent] if parent else [],
            "branch": branch,
            "title": title,
            "message": message,
            "author": self.username,
            "date": time.time(),
            "files": files,
            "lfs_files": frozenset(lfs_files),
            "operations": operations,
        }
        repo["commits"].append(commit)
        repo["branches"][branch] = oid
        if branch == "main":
            repo["files"] = files
            repo["lfs_files"] = set(lfs_files)
        return commit

    def _commit_by_oid(self, repo, oid) -> dict:
        for commit in repo["commits"]:
            if commit["oid"] == oid:
                return commit
        raise KeyError(oid)

    def _resolve_revision(self, repo, revision: str | None) -> dict:
        revision = revision or "main"
        if revision in repo["branches"]:
            return self._commit_by_oid(repo, repo["branches"][revision])
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in repo["branches"]:
            return self._commit_by_oid(repo, repo["branches"][revision[len("refs/heads/") :]])
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision.lower()):
            for commit in repo["commits"]:
                if commit["oid"].startswith(revision.lower()):
                    return commit
        raise _HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def _repo_url(self, repo_id: str, repo_type: str) -> str:
        return f"{self.endpoint}/{_URL_PREFIX.get(repo_type, '')}{repo_id}"

    # -- internals: auth --------------------------------------------------------------------------------------

    def _auth(self, headers) -> tuple[str | None, str | None]:
        """Return (token, role) with role in {"write", "read", None}; 401 on an unknown bearer token."""
        raw = headers.get("Authorization")
        if raw is None:
            return None, None
        scheme, _, token = raw.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token in self.valid_tokens:
            return token, "write"
        if scheme.lower() == "bearer" and token in self.read_only_tokens:
            return token, "read"
        raise _HubError(401, "Invalid credentials in Authorization header")

    @staticmethod
    def _require_write(role: str | None) -> None:
        if role is None:
            raise _HubError(401, "Authentication required: send a Bearer token with write access")
        if role != "write":
            raise _HubError(403, "This token has read-only access; write access is required")

    def _get_repo(self, repo_id: str, repo_type: str, role: str | None, *, write: bool = False) -> dict:
        repo = self.repos.get(repo_id)
        if repo is None or repo["type"] != repo_type:
            if role is None:
                raise _HubError(401, "Repository not found", code="RepoNotFound")
            raise _HubError(404, "Repository not found", code="RepoNotFound")
        if repo["private"] and role is None:
            raise _HubError(401, "Repository not found", code="RepoNotFound")
        if write:
            self._require_write(role)
        return repo

    # -- internals: routing -----------------------------------------------------------------------------------

    def _route(self, h: _Handler, method: str, body: bytes) -> None:
        split = urlsplit(h.path)
        path, query = split.path, parse_qs(split.query)
        _token, role = self._auth(h._record.headers)
        segs = [s for s in path.split("/") if s]

        if path == "/api/whoami-v2" and method == "GET":
            return self._whoami(h, role)
        if path == "/api/validate-yaml" and method == "POST":
            return h.send_json(200, {"errors": [], "warnings": []})
        if path == "/api/repos/create" and method == "POST":
            return self._api_create_repo(h, role, _json_body(body))
        if path == "/api/repos/delete" and method == "DELETE":
            return self._api_delete_repo(h, role, _json_body(body))
        if segs and segs[0] == "_test_lfs_upload" and method == "PUT" and len(segs) == 2:
            return self._lfs_put(h, segs[1], query, body)
        if ".git/info/lfs/objects/" in path and method == "POST":
            repo_part, _, action = path[1:].partition(".git/info/lfs/objects/")
            repo_type, repo_id = _split_url_prefix(repo_part)
            if action == "batch":
                return self._lfs_batch(h, role, repo_id, repo_type, _json_body(body))
            if action == "verify":
                return self._lfs_verify(h, role, repo_id, repo_type, _json_body(body))
        if len(segs) >= 3 and segs[0] == "api" and segs[1] in _API_REPO_TYPES:
            return self._route_repo_api(h, method, role, _API_REPO_TYPES[segs[1]], segs[2:], query, body)
        if method in ("GET", "HEAD") and "resolve" in segs:
            repo_type = "model"
            if segs[0] in _URL_PREFIX_TYPES:
                repo_type, segs = _URL_PREFIX_TYPES[segs[0]], segs[1:]
            if len(segs) >= 5 and segs[2] == "resolve":
                repo_id, rest = f"{unquote(segs[0])}/{unquote(segs[1])}", segs[3:]
            elif len(segs) >= 4 and segs[1] == "resolve":
                repo_id, rest = unquote(segs[0]), segs[2:]
            else:
                raise _HubError(404, "Not Found")
            filename = unquote("/".join(rest[1:]))
            return self._resolve(h, role, repo_id, repo_type, unquote(rest[0]), filename)
        raise _HubError(404, f"HubTestServer does not implement {method} {path}")

    def _route_repo_api(self, h, method, role, repo_type, rest, query, body) -> None:
        if len(rest) >= 2 and (rest[1] not in _API_SUBPATHS or f"{rest[0]}/{rest[1]}" in self.repos):
            repo_id, tail = f"{unquote(rest[0])}/{unquote(rest[1])}", rest[2:]
        else:
            repo_id, tail = unquote(rest[0]), rest[1:]
        action = tail[0] if tail else None
        revision = unquote(tail[1]) if len(tail) >= 2 else None
        if method == "GET" and action is None:
            return self._repo_info(h, role, repo_id, repo_type, None, query)
        if method == "GET" and action == "revision" and revision is not None:
            return self._repo_info(h, role, repo_id, repo_type, revision, query)
        if method == "GET" and action == "tree":
            return self._tree(h, role, repo_id, repo_type, revision, unquote("/".join(tail[2:])), query)
        if method == "POST" and action == "paths-info":
            return self._paths_info(h, role, repo_id, repo_type, revision, parse_qs(body.decode()))
        if method == "POST" and action == "preupload":
            return self._preupload(h, role, repo_id, repo_type, revision, _json_body(body))
        if method == "POST" and action == "commit":
            return self._commit(h, role, repo_id, repo_type, revision, query, body)
        if method == "GET" and action == "commits":
            return self._list_commits(h, role, repo_id, repo_type, revision)
        if method == "GET" and action == "refs":
            return self._refs(h, role, repo_id, repo_type, query)
        if method == "PUT" and action == "settings":
            return self._settings(h, role, repo_id, repo_type, _json_body(body))
        if method in ("POST", "DELETE") and action == "branch" and revision is not None:
            return self._branch(h, method, role, repo_id, repo_type, revision, _json_body(body))
        raise _HubError(404, f"HubTestServer does not implement {method} {h.path}")

    # -- endpoints: account / repos ---------------------------------------------------------------------------

    def _whoami(self, h, role) -> None:
        if role is None:
            raise _HubError(401, "Invalid credentials in Authorization header")
        h.send_json(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(self.username.encode()).hexdigest()[:24],
                "name": self.username,
                "fullname": "Hub Test User",
                "email": f"{self.username}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "hub-test-token", "role": role}},
            },
        )

    def _api_create_repo(self, h, role, payload: dict) -> None:
        self._require_write(role)
        name = payload.get("name")
        if not name:
            raise _HubError(400, "Missing 'name' in payload")
        repo_id = f"{payload.get('organization') or self.username}/{name}"
        repo_type = payload.get("type") or "model"
        with self._lock:
            if repo_id in self.repos:
                url = self._repo_url(repo_id, self.repos[repo_id]["type"])
                h.send_json(409, {"error": f"You already created this {repo_type} repo", "url": url})
                return
            visibility = payload.get("visibility")
            private = visibility in ("private", "protected") if visibility is not None else bool(payload.get("private"))
            repo = self._create_repo(repo_id, private=private, repo_type=repo_type)
        h.send_json(200, {"url": self._repo_url(repo_id, repo_type), "name": repo_id, "id": repo["_id"]})

    def _api_delete_repo(self, h, role, payload: dict) -> None:
        self._require_write(role)
        repo_id = f"{payload.get('organization') or self.username}/{payload.get('name')}"
        with self._lock:
            self._get_repo(repo_id, payload.get("type") or "model", role, write=True)
            del self.repos[repo_id]
        h.send_json(200, {})

    def _settings(self, h, role, repo_id, repo_type, payload: dict) -> None:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role, write=True)
            if "visibility" in payload:
                repo["private"] = payload["visibility"] in ("private", "protected")
            elif "private" in payload:
                repo["private"] = bool(payload["private"])
            if "gated" in payload:
                repo["gated"] = payload["gated"]
        h.send_json(200, {})

    def _branch(self, h, method, role, repo_id, repo_type, branch, payload: dict) -> None:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role, write=True)
            if method == "DELETE":
                if branch not in repo["branches"] or branch == "main":
                    raise _HubError(404, f"Branch {branch} not found", code="RevisionNotFound")
                del repo["branches"][branch]
            else:
                if branch.startswith("refs/"):
                    raise _HubError(400, f"Invalid reference for a branch: {branch}")
                if branch in repo["branches"]:
                    raise _HubError(409, f"Reference already exists: refs/heads/{branch}")
                start = self._resolve_revision(repo, payload.get("startingPoint"))
                repo["branches"][branch] = start["oid"]
        h.send_json(200, {})

    # -- endpoints: read --------------------------------------------------------------------------------------

    def _file_entry(self, commit: dict, path: str) -> dict:
        data = commit["files"][path]
        entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
        if path in commit["lfs_files"]:
            sha = hashlib.sha256(data).hexdigest()
            pointer = lfs_pointer(sha, len(data))
            entry["oid"] = git_blob_sha1(pointer)
            entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": len(pointer)}
        return entry

    @staticmethod
    def _folder_entry(commit: dict, folder: str) -> dict:
        children = sorted(p for p in commit["files"] if p.startswith(folder + "/"))
        tree_oid = hashlib.sha1(("\n".join(children) + commit["oid"]).encode()).hexdigest()
        return {"type": "directory", "oid": tree_oid, "size": 0, "path": folder}

    def _repo_info(self, h, role, repo_id, repo_type, revision, query) -> None:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role)
            commit = self._resolve_revision(repo, revision)
            blobs = _is_true(query.get("blobs", ["false"])[0])
            siblings = []
            for path in sorted(commit["files"]):
                sibling = {"rfilename": path}
                if blobs:
                    entry = self._file_entry(commit, path)
                    sibling.update(size=entry["size"], blobId=entry["oid"])
                    if "lfs" in entry:
                        lfs = entry["lfs"]
                        sibling["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
                siblings.append(sibling)
            info = {
                "_id": repo["_id"],
                "id": repo_id,
                "author": repo_id.split("/")[0] if "/" in repo_id else None,
                "sha": commit["oid"],
                "lastModified": _iso(commit["date"]),
                "createdAt": _iso(repo["created_at"]),
                "private": repo["private"],
                "gated": repo.get("gated", False),
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "spaces": [],
                "usedStorage": sum(len(d) for d in commit["files"].values()),
            }
            if repo_type == "model":
                info["modelId"] = repo_id
            card_data = _card_data(commit["files"].get("README.md"))
            if card_data:  # the Hub parses the README's YAML header into cardData (ModelInfo.card_data)
                info["cardData"] = card_data
        h.send_json(200, info)

    def _tree(self, h, role, repo_id, repo_type, revision, path_in_repo, query) -> None:
        recursive = _is_true(query.get("recursive", ["false"])[0])
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role)
            commit = self._resolve_revision(repo, revision)
            base = path_in_repo.strip("/")
            prefix = base + "/" if base else ""
            files = [p for p in sorted(commit["files"]) if p.startswith(prefix)]
            if base and not files:
                raise _HubError(404, f"Entry not found: {base}", code="EntryNotFound")
            entries, folders = [], []
            for path in files:
                rel_parts = path[len(prefix) :].split("/")
                for depth in range(1, len(rel_parts)):
                    if not recursive and depth > 1:
                        break
                    folder = prefix + "/".join(rel_parts[:depth])
                    if folder not in folders:
                        folders.append(folder)
                        entries.append(self._folder_entry(commit, folder))
                if recursive or len(rel_parts) == 1:
                    entries.append(self._file_entry(commit, path))
        h.send_json(200, entries)

    def _paths_info(self, h, role, repo_id, repo_type, revision, form: dict) -> None:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role)
            commit = self._resolve_revision(repo, revision)
            result = []
            for path in form.get("paths", []):
                path = path.strip("/")
                if path in commit["files"]:
                    result.append(self._file_entry(commit, path))
                elif any(p.startswith(path + "/") for p in commit["files"]):
                    result.append(self._folder_entry(commit, path))
        h.send_json(200, result)

    def _list_commits(self, h, role, repo_id, repo_type, revision) -> None:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role)
            commit = self._resolve_revision(repo, revision)
            items = []
            while commit is not None:
                items.append(
                    {
                        "id": commit["oid"],
                        "title": commit["title"],
                        "message": commit["message"],
                        "authors": [{"user": commit["author"]}],
                        "date": _iso(commit["date"]),
                    }
                )
                commit = self._commit_by_oid(repo, commit["parents"][0]) if commit["parents"] else None
        h.send_json(200, items)

    def _refs(self, h, role, repo_id, repo_type, query) -> None:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role)
            branches, prs = [], []
            for name, oid in repo["branches"].items():
                if name.startswith("refs/pr/"):
                    prs.append({"name": name, "ref": name, "targetCommit": oid})
                else:
                    branches.append({"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid})
        payload = {"branches": branches, "converts": [], "tags": []}
        if query.get("include_prs"):
            payload["pullRequests"] = prs
        h.send_json(200, payload)

    def _resolve(self, h, role, repo_id, repo_type, revision, filename) -> None:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role)
            commit = self._resolve_revision(repo, revision)
            if filename not in commit["files"]:
                raise _HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit["oid"]})
            data = commit["files"][filename]
            is_lfs = filename in commit["lfs_files"]
        headers = {"X-Repo-Commit": commit["oid"], "Accept-Ranges": "bytes", "Vary": "Origin, Accept"}
        if is_lfs:
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
            basename = quote(filename.rsplit("/", 1)[-1])
            headers["Content-Disposition"] = f"inline; filename*=UTF-8''{basename}; filename=\"{basename}\";"
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        range_header = h._record.headers.get("Range")
        if range_header:
            start, end = _parse_range(range_header, len(data))
            if start is None:
                raise _HubError(
                    416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"}
                )
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return h.send_bytes(206, data[start : end + 1], headers)
        h.send_bytes(200, data, headers)

    # -- endpoints: upload ------------------------------------------------------------------------------------

    def _preupload(self, h, role, repo_id, repo_type, revision, payload: dict) -> None:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role, write=True)
            commit = self._resolve_revision(repo, revision)
            files = []
            for item in payload.get("files", []):
                path, size = item["path"], int(item["size"])
                mode = "lfs" if self._wants_lfs(path, size) else "regular"
                answer = {"path": path, "uploadMode": mode, "shouldIgnore": False}
                if path in commit["files"]:
                    data = commit["files"][path]
                    if path in commit["lfs_files"]:
                        answer["oid"] = hashlib.sha256(data).hexdigest()
                    else:
                        answer["oid"] = git_blob_sha1(data)
                files.append(answer)
        h.send_json(200, {"files": files, "commitOid": commit["oid"]})

    def _lfs_batch(self, h, role, repo_id, repo_type, payload: dict) -> None:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role, write=True)
            if payload.get("operation") != "upload":
                raise _HubError(400, "HubTestServer only implements the LFS 'upload' batch operation")
            if "basic" not in payload.get("transfers", ["basic"]):
                raise _HubError(400, "HubTestServer only implements the LFS 'basic' transfer")
            objects = []
            for obj in payload.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                answer = {"oid": oid, "size": size, "authenticated": True}
                if oid not in repo["lfs_objects"]:
                    upload_token = secrets.token_hex(16)
                    self._upload_tokens[upload_token] = (repo_id, oid, size)
                    answer["actions"] = {
                        "upload": {"href": f"{self.endpoint}/_test_lfs_upload/{oid}?token={upload_token}"},
                        "verify": {
                            "href": f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}.git/info/lfs/objects/verify"
                        },
                    }
                objects.append(answer)
        h.send_bytes(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, h, oid: str, query: dict, body: bytes) -> None:
        """The 'pre-signed storage URL' of the basic transfer: authorized by the token in the query string."""
        upload_token = query.get("token", [""])[0]
        with self._lock:
            grant = self._upload_tokens.get(upload_token)
            if grant is None or grant[1] != oid:
                raise _HubError(403, "Invalid or expired upload URL")
            repo_id, _, size = grant
            if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
                raise _HubError(400, f"Uploaded content does not match oid {oid} / size {size}")
            self.lfs_objects[oid] = body
            if repo_id in self.repos:
                self.repos[repo_id]["lfs_objects"].add(oid)
        h.send_bytes(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _lfs_verify(self, h, role, repo_id, repo_type, payload: dict) -> None:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role, write=True)
            oid = payload.get("oid")
            if oid not in repo["lfs_objects"] or len(self.lfs_objects[oid]) != payload.get("size"):
                raise _HubError(404, f"LFS object {oid} not found")
        h.send_json(200, {"success": True})

    def _commit(self, h, role, repo_id, repo_type, revision, query, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "Commit payload must start with a 'header' line")
        header = lines[0]["value"]
        with self._lock:
            repo = self._get_repo(repo_id, repo_type, role, write=True)
            base = self._resolve_revision(repo, revision)
            branch = revision or "main"
            if branch not in repo["branches"]:
                raise _HubError(400, f"Cannot commit on {branch}: not a branch", code="RevisionNotFound")
            parent_commit = header.get("parentCommit")
            if parent_commit and not base["oid"].startswith(parent_commit.lower()):
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            files, lfs_files = dict(base["files"]), set(base["lfs_files"])
            operations = []
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise _HubError(400, f"Unsupported encoding {value.get('encoding')}")
                    files[path] = base64.b64decode(value["content"])
                    lfs_files.discard(path)
                elif key == "lfsFile":
                    oid = value.get("oid")
                    if value.get("algo", "sha256") != "sha256" or oid not in repo["lfs_objects"]:
                        raise _HubError(
                            400,
                            f"Your push was rejected because an LFS pointer pointed to a file that does not exist "
                            f"({path}, oid {oid})",
                        )
                    if "size" in value and value["size"] != len(self.lfs_objects[oid]):
                        raise _HubError(400, f"LFS size mismatch for {path}")
                    files[path] = self.lfs_objects[oid]
                    lfs_files.add(path)
                elif key == "deletedFile":
                    if path not in files:
                        raise _HubError(404, "A file with this name doesn't exist", code="EntryNotFound")
                    del files[path]
                    lfs_files.discard(path)
                elif key == "deletedFolder":
                    folder = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(folder)]
                    if not doomed:
                        raise _HubError(404, "A file with this name doesn't exist", code="EntryNotFound")
                    for p in doomed:
                        del files[p]
                        lfs_files.discard(p)
                else:
                    raise _HubError(400, f"Unknown commit operation key: {key!r}")
                operations.append({"key": key, "path": path})
            pr_url = None
            if _is_true(query.get("create_pr", ["0"])[0]):
                repo["pr_count"] += 1
                branch = f"refs/pr/{repo['pr_count']}"
                pr_url = f"{self._repo_url(repo_id, repo_type)}/discussions/{repo['pr_count']}"
            title = header.get("summary") or "Update files"
            commit = self._add_commit(
                repo, branch, base["oid"], files, lfs_files, title, header.get("description", ""), operations
            )
        h.send_json(
            200,
            {
                "success": True,
                "commitOid": commit["oid"],
                "commitUrl": f"{self._repo_url(repo_id, repo_type)}/commit/{commit['oid']}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            },
        )


def _json_body(body: bytes) -> dict:
    if not body:
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise _HubError(400, f"Invalid JSON body: {exc}") from exc
    if not isinstance(value, dict):
        raise _HubError(400, "JSON body must be an object")
    return value


def _split_url_prefix(repo_part: str) -> tuple[str, str]:
    """'datasets/user/name' -> ('dataset', 'user/name'); 'user/name' -> ('model', 'user/name')."""
    head, _, rest = repo_part.partition("/")
    if head in _URL_PREFIX_TYPES and rest:
        return _URL_PREFIX_TYPES[head], unquote(rest)
    return "model", unquote(repo_part)


def _card_data(readme: bytes | None) -> dict | None:
    """The YAML metadata block at the top of a README.md, as a dict (None without one)."""
    import yaml  # not at import time: this module imports with the standard library only

    text = (readme or b"").decode("utf-8", "replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) else None


def _is_true(value) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def _parse_range(value: str, size: int) -> tuple[int | None, int | None]:
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None, None
    start_s, _, end_s = spec.strip().partition("-")
    try:
        if start_s == "":
            length = int(end_s)
            start, end = max(size - length, 0), size - 1
        else:
            start = int(start_s)
            end = min(int(end_s), size - 1) if end_s else size - 1
    except ValueError:
        return None, None
    if start > end or start >= size:
        return None, None
    return start, end


def use_hub_server(monkeypatch, server: HubTestServer, *, token: str | None = DEFAULT_TOKEN, cache_dir=None):
    """Point the real ``huggingface_hub`` client (and ``transformers``) at ``server`` for the current test.

    ``monkeypatch`` is pytest's fixture, so everything is undone at the end of the test. Needed because
    ``huggingface_hub.constants`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_XET``,
    ``HF_HUB_CACHE``... once, at import time (and the project's conftest sets ``HF_HUB_OFFLINE=1``), and
    because ``huggingface_hub.create_repo`` & co. are bound to an ``HfApi`` built at import time.

    Args:
        token: exported as ``HF_TOKEN`` so code that relies on the implicit token authenticates. ``None`` runs
            anonymously. In both cases the token file of the developer's machine is hidden.
        cache_dir: if given, used as the Hub cache (``HF_HUB_CACHE``) for downloads.

    Returns ``server`` for convenience.
    """
    import huggingface_hub.constants as hf_constants
    from huggingface_hub import hf_api as hf_api_module

    if server.endpoint is None:
        raise RuntimeError("Start the HubTestServer before calling use_hub_server()")
    endpoint = server.endpoint

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_CO_STAGING", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)

    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    if hasattr(hf_constants, "HF_URL_HOSTS"):
        monkeypatch.setattr(hf_constants, "HF_URL_HOSTS", frozenset(hf_constants.HF_URL_HOSTS | {server.host}))
    try:  # private helper of huggingface_hub: origins to which redirects keep the auth header
        from huggingface_hub.utils import _http as hf_http

        if hasattr(hf_http, "_HUB_ORIGINS") and hasattr(hf_http, "_url_origin"):
            monkeypatch.setattr(
                hf_http, "_HUB_ORIGINS", frozenset(hf_http._HUB_ORIGINS | {hf_http._url_origin(endpoint)})
            )
    except ImportError:  # pragma: no cover
        pass
    monkeypatch.setattr(hf_api_module.api, "endpoint", endpoint)

    # Never read (nor send to the test server) the token stored on the developer's machine.
    missing_dir = os.path.join(tempfile.gettempdir(), f"hub-test-server-{os.getpid()}-{server.port}-no-token")
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", os.path.join(missing_dir, "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", os.path.join(missing_dir, "stored_tokens"))
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)
        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)

    if cache_dir is not None:
        cache_dir = os.fspath(cache_dir)
        monkeypatch.setenv("HF_HUB_CACHE", cache_dir)
        monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", cache_dir)
    return server
