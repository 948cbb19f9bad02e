"""The HTTP face of the sandbox API server: Kubernetes URL routing, discovery, verbs, watch streams.

One ``ApiHttpHandler`` serves one ``ObjectStore`` inside one event loop (aiohttp's low-level server):
every store call happens in that loop, so the store needs no locks. Long-lived responses (watches,
followed logs) are in ``streams``.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import yaml
from aiohttp import web

from . import errors as errors
from . import openapi as openapi
from . import protobuf as protobuf
from . import scale as scale
from .access import AccessControl
from .faults import Faults
from .patches import json_patch, merge_patch, strategic_merge_patch
from .resources import ResourceType, list_kind
from .selectors import Matcher, selectors_matcher
from .store import JSON, ObjectStore
from .streams import Streams
from .tables import table, wants_table

log = logging.getLogger(__name__)

SERVER_VERSION: JSON = {
    "major": "1",
    "minor": "35",
    "gitVersion": "v1.35.0+bloomz-sandbox",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' version order: GA before beta before alpha, higher numbers first (as a sort key)."""
    match = _VERSION_RE.match(version)
    if match is None:
        return (3, 0, 0)
    major, stage, minor = match.groups()
    stage_rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (stage_rank, -int(major), -int(minor or 0))


class RequestRecord(NamedTuple):
    method: str
    path: str
    query: str
    user_agent: str


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")


class ApiHttpHandler:
    """Routes Kubernetes API requests to the store (``await handler(request)``)."""

    def __init__(self, store: ObjectStore, *, bookmark_interval_s: float = 10.0) -> None:
        self.store = store
        self.streams = Streams(store, bookmark_interval_s=bookmark_interval_s)
        self.address = ""  # host:port for /api's serverAddressByClientCIDRs, set once listening
        self.request_log: list[RequestRecord] | None = None  # a list records every request
        self.faults = Faults()  # injected errors and stalls (tests)
        self.access = AccessControl(store)  # tokens, RBAC for service accounts, audit log

    def open(self) -> None:
        """Serve streams again (a restarted server)."""
        self.streams.open()

    def close_watches(self) -> None:
        """End every open watch stream and log follower (server shutdown)."""
        self.streams.close()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.request_log is not None:
            agent = request.headers.get("User-Agent", "")
            self.request_log.append(RequestRecord(request.method, request.path, request.query_string, agent))
        code = 500
        user, attrs = None, None
        try:
            await self.faults.intercept(request)
            user, attrs, _ = self.access.check(
                request.method, request.path, request.query, request.headers.get("Authorization", "")
            )
            if request.query.get("watch") in ("true", "1"):
                self.access.record(user, attrs, 200)  # a watch streams until it ends: audit its start
                user = None
            response = await self._dispatch(request)
            code = response.status
            return response
        except errors.ApiError as error:
            code = error.code
            return _json(error.status_body(), error.code)
        except web.HTTPRequestEntityTooLarge as error:
            too_large = errors.ApiError(
                413, "RequestEntityTooLarge", f"the request is too large: {error.text}"
            )
            return _json(too_large.status_body(), 413)
        except Exception as error:  # a bug must reach the client as a 500 Status, not as a dropped socket
            log.exception("sandbox API server: %s %s failed", request.method, request.path_qs)
            return _json(
                errors.ApiError(500, "InternalError", f"internal error: {error!r}").status_body(), 500
            )
        finally:
            if user is not None and attrs is not None:
                self.access.record(user, attrs, code)

    # ----- routing
    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        segments = [s for s in request.path.split("/") if s]
        if not segments:
            return _json({"paths": self._paths()})
        head = segments[0]
        if segments == ["version"]:
            return _json(SERVER_VERSION)
        if head in ("healthz", "livez", "readyz") and len(segments) == 1:
            return web.Response(text="ok")
        if head == "api":
            if len(segments) == 1:
                return _json(
                    {
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": self.address}
                        ],
                    }
                )
            if segments[1] != "v1":
                raise errors.unknown_resource(request.path)
            if len(segments) == 2:
                return _json(self._resource_list("", "v1"))
            return await self._serve_resource(request, "", "v1", segments[2:])
        if head == "apis":
            if len(segments) == 1:
                return _json(self._group_list())
            if len(segments) == 2:
                return _json(self._group(segments[1]))
            if len(segments) == 3:
                return _json(self._resource_list(segments[1], segments[2]))
            return await self._serve_resource(request, segments[1], segments[2], segments[3:])
        if segments[:2] == ["openapi", "v3"]:
            return self._openapi_v3(request, "/".join(segments[2:]))
        raise errors.unknown_resource(request.path)  # /openapi/v2 too: kubectl uses v3

    # ----- discovery
    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, set[str]] = {}
        for resource in self.store.resource_types():
            if resource.group:
                groups.setdefault(resource.group, set()).add(resource.version)
        return {group: sorted(versions, key=version_priority) for group, versions in sorted(groups.items())}

    def _paths(self) -> list[str]:
        paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/livez", "/readyz"}
        for group, versions in self._groups().items():
            paths.add(f"/apis/{group}")
            paths.update(f"/apis/{group}/{version}" for version in versions)
        return sorted(paths)

    @staticmethod
    def _group_entry(group: str, versions: list[str]) -> JSON:
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _group_list(self) -> JSON:
        groups = [self._group_entry(group, versions) for group, versions in self._groups().items()]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _group(self, group: str) -> JSON:
        versions = self._groups().get(group)
        if not versions:
            raise errors.unknown_resource(f"/apis/{group}")
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_entry(group, versions)}

    def _resource_list(self, group: str, version: str) -> JSON:
        resources = [r for r in self.store.resource_types() if r.group == group and r.version == version]
        if not resources:
            raise errors.unknown_resource(f"/apis/{group}/{version}")
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": resources[0].group_version,
            "resources": [entry for r in resources for entry in r.discovery_entries()],
        }

    def _openapi_v3(self, request: web.BaseRequest, group_version: str) -> web.Response:
        resources = self.store.resource_types()
        if not group_version:
            return _json(openapi.index_document(resources))
        members = openapi.by_group_version(resources).get(group_version)
        if not members:
            raise errors.unknown_resource(request.path)
        return _json(openapi.group_version_document(members))

    # ----- resources
    async def _serve_resource(
        self, request: web.BaseRequest, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            scoped = self.store.find_type(group, version, rest[2])
            if scoped is not None and scoped.namespaced:
                namespace, rest = rest[1], rest[2:]
        resource = self.store.find_type(group, version, rest[0])
        if resource is None or (namespace is not None and not resource.namespaced):
            raise errors.unknown_resource(request.path)
        name = rest[1] if len(rest) > 1 else None
        subresource = "/".join(rest[2:]) or None
        if subresource == "log" and resource.storage_key == ("", "pods") and name and request.method == "GET":
            return await self.streams.pod_log(request, resource, namespace, name)
        if subresource == "token" and resource.storage_key == ("", "serviceaccounts") and name:
            if request.method != "POST" or namespace is None:
                raise errors.method_not_allowed()
            body = await self._body(request) if request.can_read_body else None
            spec = (body or {}).get("spec") or {} if isinstance(body, Mapping) else {}
            return _json(
                self.access.issue_token(namespace, name, int(spec.get("expirationSeconds") or 3600)), 201
            )
        if subresource == "scale" and name is not None and resource.scale is not None:
            return await self._scale(request, resource, namespace, name)
        if subresource not in (None, "status") or (
            subresource == "status" and not resource.has_status_subresource
        ):
            raise errors.unknown_resource(request.path)
        query = request.query
        dry_run = bool(query.getall("dryRun", []))
        method = request.method

        if method == "GET" and query.get("watch") in ("true", "1"):
            field_selector = f"metadata.name={name}" if name is not None else query.get("fieldSelector")
            matcher = selectors_matcher(query.get("labelSelector"), field_selector)
            return await self.streams.watch(request, resource, namespace, matcher)
        if method == "GET" and name is None:
            return self._list(request, resource, namespace)
        if method == "GET":
            obj = self.store.get(resource, namespace, name or "")
            return self._object_or_table(request, resource, obj)
        if method == "POST" and name is None:
            if resource.namespaced and namespace is None:
                raise errors.method_not_allowed()
            body = await self._body(request)
            return _json(self.store.create(resource, namespace, body, dry_run=dry_run), 201)
        if method == "PUT" and name is not None:
            body = await self._body(request)
            updated = self.store.update(
                resource, namespace, name, lambda _: body, subresource=subresource, dry_run=dry_run
            )
            return _json(updated)
        if method == "PATCH" and name is not None:
            return await self._patch(request, resource, namespace, name, subresource, dry_run)
        if method == "DELETE":
            return await self._delete(request, resource, namespace, name, dry_run)
        raise errors.method_not_allowed()

    async def _scale(
        self, request: web.BaseRequest, resource: ResourceType, namespace: str | None, name: str
    ) -> web.Response:
        """GET, PUT and PATCH (merge or JSON patch) of the autoscaling/v1 Scale of a custom resource."""
        paths = resource.scale or {}
        dry_run = bool(request.query.getall("dryRun", []))
        current = self.store.get(resource, namespace, name)
        if request.method == "GET":
            return _json(scale.to_scale(current, paths))
        body = await self._body(request)
        if request.method == "PUT":
            wanted = body
        elif request.method == "PATCH":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type == "application/merge-patch+json":
                wanted = merge_patch(scale.to_scale(current, paths), body)
            elif content_type == "application/json-patch+json":
                wanted = json_patch(scale.to_scale(current, paths), body)
            else:
                raise errors.unsupported_media_type(content_type)
        else:
            raise errors.method_not_allowed()
        updated = self.store.update(
            resource, namespace, name, lambda obj: scale.scaled(obj, paths, wanted), dry_run=dry_run
        )
        return _json(scale.to_scale(updated, paths))

    async def _body(self, request: web.BaseRequest) -> Any:
        raw = await request.read()
        content_type = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if content_type == protobuf.PROTOBUF:  # kubectl's typed clients: create namespace|configmap|...
            return protobuf.decode_object(raw)
        if not (content_type.endswith("json") or content_type.endswith("yaml")):
            raise errors.unsupported_media_type(content_type)
        try:
            if content_type.endswith("yaml"):
                return yaml.safe_load(raw) if raw else None
            return json.loads(raw) if raw else None
        except (ValueError, yaml.YAMLError) as error:
            raise errors.bad_request(f"the request body could not be decoded: {error}") from None

    def _object_or_table(self, request: web.BaseRequest, resource: ResourceType, obj: JSON) -> web.Response:
        if wants_table(request.headers.get("Accept", "")):
            return _json(
                table(
                    resource,
                    [obj],
                    now=datetime.datetime.now(datetime.timezone.utc),
                    resource_version=obj["metadata"].get("resourceVersion", ""),
                    include_object=request.query.get("includeObject", "Metadata"),
                )
            )
        return _json(obj)

    def _matcher(self, request: web.BaseRequest, field_selector: str | None = None) -> Matcher:
        return selectors_matcher(request.query.get("labelSelector"), field_selector)

    def _list(self, request: web.BaseRequest, resource: ResourceType, namespace: str | None) -> web.Response:
        matcher = self._matcher(request, request.query.get("fieldSelector"))
        items = self.store.list_objects(resource, namespace, matcher)
        revision = str(self.store.revision)
        if wants_table(request.headers.get("Accept", "")):
            return _json(
                table(
                    resource,
                    items,
                    now=datetime.datetime.now(datetime.timezone.utc),
                    resource_version=revision,
                    include_object=request.query.get("includeObject", "Metadata"),
                )
            )
        return _json(
            {
                "kind": list_kind(resource.kind),
                "apiVersion": resource.group_version,
                "metadata": {"resourceVersion": revision},
                "items": items,
            }
        )

    async def _patch(
        self,
        request: web.BaseRequest,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        subresource: str | None,
        dry_run: bool,
    ) -> web.Response:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        body = await self._body(request)
        if content_type == "application/merge-patch+json":
            change = lambda current: merge_patch(current, body)  # noqa: E731
        elif content_type == "application/json-patch+json":
            change = lambda current: json_patch(current, body)  # noqa: E731
        elif content_type == "application/strategic-merge-patch+json":
            if resource.custom:  # real servers refuse strategic merge for custom resources too
                raise errors.unsupported_media_type(content_type)
            change = lambda current: strategic_merge_patch(current, body)  # noqa: E731
        elif content_type == "application/apply-patch+yaml":
            return await self._apply(resource, namespace, name, subresource, body, dry_run)
        else:
            raise errors.unsupported_media_type(content_type)
        return _json(
            self.store.update(resource, namespace, name, change, subresource=subresource, dry_run=dry_run)
        )

    async def _apply(
        self,
        resource: ResourceType,
        namespace: str | None,
        name: str,
        subresource: str | None,
        body: Any,
        dry_run: bool,
    ) -> web.Response:
        """Server-side apply, simplified: create when absent, else a strategic merge (no field managers)."""
        if not isinstance(body, dict):
            raise errors.bad_request("an apply patch must be an object")
        body.setdefault("metadata", {}).setdefault("name", name)
        try:
            self.store.get(resource, namespace, name)
        except errors.ApiError as error:
            if error.code != 404 or subresource is not None:
                raise
            return _json(self.store.create(resource, namespace, body, dry_run=dry_run), 201)
        return _json(
            self.store.update(
                resource,
                namespace,
                name,
                lambda current: strategic_merge_patch(current, body),
                subresource=subresource,
                dry_run=dry_run,
            )
        )

    async def _delete(
        self,
        request: web.BaseRequest,
        resource: ResourceType,
        namespace: str | None,
        name: str | None,
        dry_run: bool,
    ) -> web.Response:
        options = await self._body(request) if request.can_read_body else None
        options = options if isinstance(options, Mapping) else {}
        propagation = options.get("propagationPolicy") or request.query.get("propagationPolicy")
        if options.get("orphanDependents") is True or request.query.get("orphanDependents") == "true":
            propagation = "Orphan"
        grace = options.get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
        if name is None:
            deleted = self.store.delete_collection(
                resource,
                namespace,
                self._matcher(request, request.query.get("fieldSelector")),
                propagation=propagation,
                dry_run=dry_run,
            )
            return _json(
                {
                    "kind": list_kind(resource.kind),
                    "apiVersion": resource.group_version,
                    "metadata": {"resourceVersion": str(self.store.revision)},
                    "items": deleted,
                }
            )
        obj = self.store.delete(
            resource,
            namespace,
            name,
            propagation=propagation,
            preconditions=options.get("preconditions"),
            grace_period_seconds=int(grace) if grace is not None else None,
            dry_run=dry_run,
        )
        return _json(obj)
