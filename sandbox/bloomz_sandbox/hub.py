"""A local stand-in for the Hugging Face Hub: the routes huggingface_hub's `snapshot_download` and
`list_repo_tree` call, over real HTTP, serving repositories from a directory (`<root>/<org>/<name>/`).

Download pods reach it through `HF_ENDPOINT` (the operator's `hubEndpoint` setting, the same one an
air-gapped cluster points at its mirror). Routes (huggingface_hub 0.36):
- `GET /api/models/<repo>/revision/<rev>`: the repository's info (`sha`, `siblings`);
- `GET /api/models/<repo>/tree/<rev>`: its files with their sizes (one page);
- `HEAD|GET /<repo>/resolve/<rev>/<path>`: a file, with `X-Repo-Commit`, `ETag`, `Content-Length` and
  `Range` support (an interrupted download resumes).
Revisions: `main` and the commit (a digest of the file list). Errors carry the Hub's `X-Error-Code`:
an unknown repository 404 `RepoNotFound`, an unknown revision 404 `RevisionNotFound`, a repository
holding a `.gated` file 401 `GatedRepo`, so huggingface_hub raises the same exceptions as against the Hub.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_REVISION = "main"
GATED_MARKER = ".gated"
_API = re.compile(r"^/api/models/(?P<repo>.+?)/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?:/.*)?$")
_RESOLVE = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 1 << 20


class HubError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def repo_files(repo_dir: Path) -> list[Path]:
    """The repository's files (relative paths, sorted); the gated marker is not one of them."""
    return sorted(
        p.relative_to(repo_dir) for p in repo_dir.rglob("*") if p.is_file() and p.name != GATED_MARKER
    )


def commit_of(repo_dir: Path) -> str:
    """A stable 40-hex "commit" for the repository's current files (paths and sizes)."""
    digest = hashlib.sha1()
    for relative in repo_files(repo_dir):
        digest.update(f"{relative.as_posix()}\0{(repo_dir / relative).stat().st_size}\n".encode())
    return digest.hexdigest()


def file_etag(commit: str, relative: str) -> str:
    return hashlib.sha1(f"{commit}/{relative}".encode()).hexdigest()


class LocalHub:
    """start() serves `root` on 127.0.0.1 (port 0 = any free one); `endpoint` is the HF_ENDPOINT value."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.requests: list[tuple[str, str]] = []  # (method, path): what the clients asked for

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> LocalHub:
        self._thread = threading.Thread(target=self._server.serve_forever, name="sandbox-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() would wait forever for a loop that never ran
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- pure-ish lookups (the filesystem only) ------------------------------------------------------

    def repo_dir(self, repo: str, revision: str) -> tuple[Path, str]:
        """The repository's directory and commit; HubError for an unknown repository or revision."""
        parts = repo.split("/")
        directory = self.root.joinpath(*parts)
        if any(p in ("", ".", "..") for p in parts) or not directory.is_dir():
            raise HubError(404, "RepoNotFound", f"Repository {repo} not found")
        if (directory / GATED_MARKER).exists():
            raise HubError(401, "GatedRepo", f"Access to model {repo} is restricted")
        commit = commit_of(directory)
        if revision not in (DEFAULT_REVISION, commit):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return directory, commit

    def info(self, repo: str, revision: str) -> dict[str, Any]:
        directory, commit = self.repo_dir(repo, revision)
        files = [p.as_posix() for p in repo_files(directory)]
        return {
            "id": repo,
            "modelId": repo,
            "sha": commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": [],
            "siblings": [{"rfilename": f} for f in files],
        }

    def tree(self, repo: str, revision: str) -> list[dict[str, Any]]:
        directory, commit = self.repo_dir(repo, revision)
        return [
            {
                "type": "file",
                "path": p.as_posix(),
                "size": (directory / p).stat().st_size,
                "oid": file_etag(commit, p.as_posix()),
            }
            for p in repo_files(directory)
        ]

    def file(self, repo: str, revision: str, path: str) -> tuple[Path, str]:
        directory, commit = self.repo_dir(repo, revision)
        target = (directory / path).resolve()
        if directory.resolve() not in target.parents or not target.is_file() or target.name == GATED_MARKER:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at {revision}")
        return target, commit


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a `Range: bytes=a-[b]` header, None for the whole file."""
    match = _RANGE.match(header or "")
    if not match:
        return None
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) else size - 1
    return first, min(last, size - 1)


def _read(path: Path, first: int, last: int) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(first)
        left = last - first + 1
        while left > 0:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def _handler_for(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: Any) -> None:  # requests are kept in hub.requests instead
            return

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            try:
                if (api := _API.match(path)) is not None:
                    repo, rev = api.group("repo"), api.group("rev")
                    data = hub.info(repo, rev) if api.group("kind") == "revision" else hub.tree(repo, rev)
                    self._json(200, data, body)
                elif (resolve := _RESOLVE.match(path)) is not None:
                    self._file(resolve.group("repo"), resolve.group("rev"), resolve.group("path"), body)
                else:
                    raise HubError(404, "EntryNotFound", f"no route for {path}")
            except HubError as error:
                self._json(error.status, {"error": error.message}, body, error_code=error.code)

        def _json(self, status: int, data: Any, body: bool, error_code: str = "") -> None:
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if error_code:
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", str(data.get("error", "")))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def _file(self, repo: str, revision: str, relative: str, body: bool) -> None:
            target, commit = hub.file(repo, revision, relative)
            size = target.stat().st_size
            span = _byte_range(self.headers.get("Range"), size)
            first, last = span or (0, size - 1)
            self.send_response(206 if span else 200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{file_etag(commit, relative)}"')
            self.send_header("Content-Length", str(max(0, last - first + 1)))
            if span:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.end_headers()
            if body:
                for chunk in _read(target, first, last):
                    self.wfile.write(chunk)

    return Handler
