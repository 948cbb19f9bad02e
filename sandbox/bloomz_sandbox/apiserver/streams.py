"""Long-lived responses of the sandbox API server: watch streams and followed pod logs.

Both end when their client goes away or when the server stops (``close``), so that stopping never
waits on an open ``kubectl get -w``, a Kopf watch or a ``kubectl logs -f``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from . import errors as errors
from .resources import ResourceType
from .selectors import Matcher
from .store import JSON, ObjectStore, WatchEvent
from .tables import table, wants_table


class Streams:
    """Serves watches and log follows for one store, and ends them all on shutdown."""

    def __init__(self, store: ObjectStore, *, bookmark_interval_s: float = 10.0) -> None:
        self.store = store
        self.bookmark_interval_s = bookmark_interval_s
        # (namespace, pod, container) -> the container's log file, for pods/log (kubectl logs).
        self.pod_logs: Callable[[str, str, str], Path | None] | None = None
        self.log_poll_s = 0.2
        self._watch_queues: set[asyncio.Queue[WatchEvent | None]] = set()
        self._closing = False

    def open(self) -> None:
        self._closing = False

    def close(self) -> None:
        self._closing = True
        for queue in list(self._watch_queues):
            queue.put_nowait(None)

    # ----- pods/log
    async def pod_log(
        self, request: web.BaseRequest, resource: ResourceType, namespace: str | None, name: str
    ) -> web.StreamResponse:
        """``kubectl logs [-f] [--tail N]``: the container's log file from the provider (the pod runner)."""
        pod = self.store.get(resource, namespace, name)
        containers = [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []]
        container = request.query.get("container") or (containers[0] if len(containers) == 1 else "")
        if not container:
            raise errors.bad_request(
                f"a container name must be specified for pod {name}, choose one of: {containers}"
            )
        if container not in containers:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        path = self.pod_logs(namespace or "", name, container) if self.pod_logs is not None else None
        if path is None or not path.exists():
            raise errors.bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: no logs yet'
            )
        content = path.read_bytes()
        offset = len(content)  # where following continues
        tail = request.query.get("tailLines")
        if tail is not None and tail.isdigit():
            lines = content.splitlines(keepends=True)
            content = b"".join(lines[len(lines) - int(tail) :]) if int(tail) else b""
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await response.write(content)
            uid = pod["metadata"]["uid"]
            while request.query.get("follow") == "true" and not self._closing:
                await asyncio.sleep(self.log_poll_s)
                with contextlib.suppress(OSError):
                    with path.open("rb") as stream:  # the file may be replaced by a restart
                        stream.seek(offset)
                        more = stream.read()
                    offset += len(more)
                    if more:
                        await response.write(more)
                try:
                    if self.store.get(resource, namespace, name)["metadata"]["uid"] != uid:
                        break
                except errors.ApiError:  # the pod is gone: so is its log stream
                    break
            await response.write_eof()
        except (ConnectionError, RuntimeError):  # the client went away
            pass
        return response

    # ----- watch
    async def watch(
        self,
        request: web.BaseRequest,
        resource: ResourceType,
        namespace: str | None,
        matcher: Matcher,
    ) -> web.StreamResponse:
        """A watch stream: the starting state or history, then every matching change as a JSON line."""
        as_table = wants_table(request.headers.get("Accept", ""))
        include_object = request.query.get("includeObject", "Metadata")
        timeout = float(request.query["timeoutSeconds"]) if request.query.get("timeoutSeconds") else None
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        since = request.query.get("resourceVersion", "")

        # Subscribe and take the starting point in one synchronous step: no change can fall in between.
        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        unsubscribe = self.store.subscribe(queue.put_nowait)
        self._watch_queues.add(queue)
        try:
            initial: list[tuple[str, JSON]] = []
            expired: errors.ApiError | None = None
            # sendInitialEvents (client-go's streaming lists, kubectl wait) asks for the current state
            # followed by a bookmark that marks its end, whatever resourceVersion says.
            send_initial = request.query.get("sendInitialEvents") == "true"
            if since in ("", "0") or send_initial:
                initial = [("ADDED", obj) for obj in self.store.list_objects(resource, namespace, matcher)]
            else:
                try:
                    for event in self.store.events_since(resource.storage_key, int(since)):
                        initial.extend(translate(event, resource, namespace, matcher))
                except ValueError:
                    raise errors.bad_request(f"invalid resourceVersion {since!r}") from None
                except errors.ApiError as error:
                    expired = error

            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            stream = WatchWriter(response, resource, as_table, include_object)
            if expired is not None:
                await stream.send_raw({"type": "ERROR", "object": expired.status_body()})
                return response
            for event_type, obj in initial:
                if not await stream.send(event_type, obj):
                    return response
            if send_initial:
                end = self._bookmark(resource)
                end["metadata"]["annotations"] = {"k8s.io/initial-events-end": "true"}
                if not await stream.send_raw({"type": "BOOKMARK", "object": end}):
                    return response
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout is not None else None
            while True:
                waits = [self.bookmark_interval_s] if bookmarks else []
                if deadline is not None:
                    waits.append(deadline - loop.time())
                wait = min(waits) if waits else None
                if wait is not None and wait <= 0:
                    break
                try:
                    next_event = await asyncio.wait_for(queue.get(), wait)
                except asyncio.TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        break
                    if not await stream.send_raw({"type": "BOOKMARK", "object": self._bookmark(resource)}):
                        break
                    continue
                if next_event is None:
                    break
                sent = True
                for event_type, obj in translate(next_event, resource, namespace, matcher):
                    sent = sent and await stream.send(event_type, obj)
                if not sent:
                    break
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write_eof()
            return response
        finally:
            unsubscribe()
            self._watch_queues.discard(queue)

    def _bookmark(self, resource: ResourceType) -> JSON:
        return {
            "kind": resource.kind,
            "apiVersion": resource.group_version,
            "metadata": {"resourceVersion": str(self.store.revision)},
        }


def translate(
    event: WatchEvent, resource: ResourceType, namespace: str | None, matcher: Matcher
) -> list[tuple[str, JSON]]:
    """What a watcher with these filters sees of a change (moving out of a selector is a DELETED)."""
    if event.storage_key != resource.storage_key:
        return []
    if namespace and resource.namespaced and event.obj["metadata"].get("namespace") != namespace:
        return []
    obj = dict(event.obj, apiVersion=resource.group_version, kind=resource.kind)
    now_matches = matcher(event.obj)
    if event.type == "MODIFIED" and event.old is not None:
        before = matcher(event.old)
        if now_matches and not before:
            return [("ADDED", obj)]
        if before and not now_matches:
            return [("DELETED", obj)]
    return [(event.type, obj)] if now_matches else []


class WatchWriter:
    """Writes watch events as JSON lines; as Tables when kubectl asked for them."""

    def __init__(
        self, response: web.StreamResponse, resource: ResourceType, as_table: bool, include: str
    ) -> None:
        self.response = response
        self.resource = resource
        self.as_table = as_table
        self.include = include
        self.headers_sent = False

    async def send(self, event_type: str, obj: JSON) -> bool:
        if self.as_table:
            rendered = table(
                self.resource,
                [obj],
                now=datetime.datetime.now(datetime.timezone.utc),
                resource_version=obj["metadata"].get("resourceVersion", ""),
                include_object=self.include,
                headers=not self.headers_sent,
            )
            self.headers_sent = True
            return await self.send_raw({"type": event_type, "object": rendered})
        return await self.send_raw({"type": event_type, "object": obj})

    async def send_raw(self, event: JSON) -> bool:
        try:
            await self.response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionError, RuntimeError):  # the client went away
            return False
        return True
