"""API keys: one key per line in a file, re-read when the file changes (Secret rotation, no restart).

The path may also be a directory (a mounted Secret): every file in it holds keys, one per line, so
a Secret with one key per data entry works as it is, and the operator can project its own key beside
the users' ones.

Shared by both protocols: gRPC reads ``authorization: Bearer <key>`` metadata, HTTP the
``Authorization: Bearer <key>`` header. Without a key file the service is open.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading

from bloomz_runtime.errors import Unauthenticated

log = logging.getLogger("bloomz_runtime.auth")


def parse_keys(text: str) -> frozenset[str]:
    """One key per line; blank lines and ``#`` comments are skipped, whitespace is trimmed."""
    keys = (line.strip() for line in text.splitlines())
    return frozenset(k for k in keys if k and not k.startswith("#"))


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_accepted(token: str | None, keys: frozenset[str]) -> bool:
    # Compare with every key in constant time, so timing tells nothing about how close a guess was.
    if token is None:
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


def _files(path: str) -> list[str]:
    if not os.path.isdir(path):
        return [path]
    # Kubernetes keeps a Secret volume's real files under dot-named folders; the visible names link to them.
    names = sorted(n for n in os.listdir(path) if not n.startswith("."))
    return [p for p in (os.path.join(path, n) for n in names) if os.path.isfile(p)]


def _stamp(path: str) -> tuple[tuple[str, int, int, int], ...]:
    stamps = []
    for name in _files(path):
        st = os.stat(name)
        stamps.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class ApiKeys:
    """The accepted keys, reloaded whenever a file's identity (inode, size, mtime) changes.

    Kubernetes updates a mounted Secret by swapping a symlink, so ``stat`` of the path sees a new
    inode. An unreadable or empty source accepts no key: a broken Secret must not open the service.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: object = None
        self._keys: frozenset[str] = frozenset()
        self.keys()

    def keys(self) -> frozenset[str]:
        with self._lock:
            try:
                stamp: object = _stamp(self.path)
            except OSError as exc:
                stamp = ("unreadable", str(exc))
            if stamp == self._stamp:
                return self._keys
            self._stamp = stamp
            try:
                keys: set[str] = set()
                for name in _files(self.path):
                    with open(name, encoding="utf-8") as f:
                        keys |= parse_keys(f.read())
                self._keys = frozenset(keys)
                log.info("API keys loaded from %s: %d key(s)", self.path, len(self._keys))
            except (OSError, UnicodeDecodeError) as exc:
                log.error("API keys at %s unreadable (%s): refusing every request", self.path, exc)
                self._keys = frozenset()
            return self._keys

    def check(self, authorization: str | None) -> None:
        """Raise Unauthenticated unless ``authorization`` is ``Bearer <one of the keys>``."""
        token = bearer_token(authorization)
        if token is None:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        if not key_accepted(token, self.keys()):
            raise Unauthenticated("invalid API key")
