"""Kubernetes RBAC, as pure functions: what a request asks for, and whether RBAC objects allow it.

``request_attributes`` turns a method and URL into the attributes a real API server authorizes (verb,
API group, resource, subresource, namespace, name; or a non-resource path); ``authorize`` decides from
Roles, ClusterRoles, RoleBindings and ClusterRoleBindings given as plain objects, with the rules of
Kubernetes' RBAC authorizer: a ClusterRoleBinding grants its ClusterRole everywhere, a RoleBinding
grants its Role or ClusterRole only in its own namespace, ``*`` matches anything, ``pods/status`` names
a subresource (``*/status`` any resource's), ``resourceNames`` restricts named requests only.
Discovery paths (``/api``, ``/apis``, ``/version``, ``/healthz``, ``/openapi``) are open to every
authenticated user, as the default ``system:discovery`` and ``system:public-info-viewer`` roles make them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

JSON = Mapping[str, Any]

# The URL prefixes of namespaced resources that a request can name: /api/v1/..., /apis/<g>/<v>/...
_READ_VERBS = {"GET": "get", "HEAD": "get"}
_WRITE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}
DISCOVERY_PATHS: tuple[str, ...] = ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi")


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestAttributes:
    """What one request asks for (Kubernetes' authorizer.Attributes)."""

    verb: str
    path: str
    resource_request: bool = True
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    # The binding and role that allowed it: "ClusterRoleBinding/x -> ClusterRole/y" (for rule-usage checks).
    granted_by: tuple[str, ...] = field(default=(), compare=False)


def service_account_user(namespace: str, name: str) -> UserInfo:
    """The user a service account's token authenticates as, with its standard groups."""
    return UserInfo(
        f"system:serviceaccount:{namespace}:{name}",
        (
            "system:serviceaccounts",
            f"system:serviceaccounts:{namespace}",
            "system:authenticated",
        ),
    )


def request_attributes(method: str, path: str, query: Mapping[str, str] | None = None) -> RequestAttributes:
    """The authorization attributes of ``method path?query``, as Kubernetes' RequestInfoFactory sees them."""
    query = query or {}
    segments = [s for s in path.split("/") if s]
    is_watch = query.get("watch") in ("true", "1")
    if not segments or segments[0] not in ("api", "apis"):
        return RequestAttributes(verb=_non_resource_verb(method), path=path, resource_request=False)
    if segments[0] == "api":
        group, rest = "", segments[2:]
        if len(segments) < 3:
            return RequestAttributes(verb=_non_resource_verb(method), path=path, resource_request=False)
    else:
        if len(segments) < 4:
            return RequestAttributes(verb=_non_resource_verb(method), path=path, resource_request=False)
        group, rest = segments[1], segments[3:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if name:
        verb = "watch" if is_watch and method == "GET" else _named_verb(method)
    else:
        verb = _collection_verb(method, is_watch)
        # list/watch of one object by field selector is authorized as a named request
        selected = _selected_name(query.get("fieldSelector", ""))
        if selected and verb in ("list", "watch"):
            name = selected
    return RequestAttributes(
        verb=verb,
        path=path,
        group=group,
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
    )


def _non_resource_verb(method: str) -> str:
    return {"GET": "get", "HEAD": "head", "POST": "post", "PUT": "put", "PATCH": "patch"}.get(
        method, method.lower()
    )


def _named_verb(method: str) -> str:
    if method == "DELETE":
        return "delete"
    return _READ_VERBS.get(method) or _WRITE_VERBS.get(method) or method.lower()


def _collection_verb(method: str, is_watch: bool) -> str:
    if method in _READ_VERBS:
        return "watch" if is_watch else "list"
    if method == "DELETE":
        return "deletecollection"
    return _WRITE_VERBS.get(method) or method.lower()


def _selected_name(field_selector: str) -> str:
    for term in field_selector.split(","):
        key, sep, value = term.partition("=")
        if sep and key.strip() == "metadata.name" and not value.startswith("="):
            return value.strip()
    return ""


# ----- rules
def _contains(values: Iterable[str], wanted: str) -> bool:
    values = list(values or ())
    return "*" in values or wanted in values


def _resource_matches(rule_resources: Sequence[str], attrs: RequestAttributes) -> bool:
    for resource in rule_resources or ():
        if resource == "*" or resource == attrs.combined_resource:
            return True
        if attrs.subresource and resource == f"*/{attrs.subresource}":
            return True
    return False


def rule_allows(rule: JSON, attrs: RequestAttributes) -> bool:
    """Whether one PolicyRule covers the request."""
    if not _contains(rule.get("verbs") or (), attrs.verb):
        return False
    if not attrs.resource_request:
        return any(
            url == "*" or url == attrs.path or (url.endswith("*") and attrs.path.startswith(url[:-1]))
            for url in rule.get("nonResourceURLs") or ()
        )
    if not _contains(rule.get("apiGroups") or (), attrs.group):
        return False
    if not _resource_matches(rule.get("resources") or (), attrs):
        return False
    names = rule.get("resourceNames") or ()
    return not names or attrs.name in names


def _subject_matches(subject: JSON, user: UserInfo, binding_namespace: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return subject.get("name") == user.name
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.name == f"system:serviceaccount:{namespace}:{subject.get('name')}"
    return False


def _rules(objects: Iterable[JSON], name: str, namespace: str = "") -> list[JSON]:
    for obj in objects:
        metadata = obj.get("metadata") or {}
        if metadata.get("name") == name and (metadata.get("namespace") or "") == namespace:
            return list(obj.get("rules") or ())
    return []


@dataclass(frozen=True)
class RbacObjects:
    """The cluster's RBAC objects (as the API serves them)."""

    roles: Sequence[JSON] = ()
    cluster_roles: Sequence[JSON] = ()
    role_bindings: Sequence[JSON] = ()
    cluster_role_bindings: Sequence[JSON] = ()


def _grants(rbac: RbacObjects, user: UserInfo, attrs: RequestAttributes) -> Iterable[tuple[str, list[JSON]]]:
    """(description, rules) of every role bound to the user that applies to the request's namespace."""
    for binding in rbac.cluster_role_bindings:
        if any(_subject_matches(s, user, "") for s in binding.get("subjects") or ()):
            role = (binding.get("roleRef") or {}).get("name", "")
            label = f"ClusterRoleBinding/{binding['metadata']['name']} -> ClusterRole/{role}"
            yield label, _rules(rbac.cluster_roles, role)
    if not attrs.namespace:
        return
    for binding in rbac.role_bindings:
        metadata = binding.get("metadata") or {}
        if metadata.get("namespace") != attrs.namespace:
            continue
        if not any(_subject_matches(s, user, attrs.namespace) for s in binding.get("subjects") or ()):
            continue
        ref = binding.get("roleRef") or {}
        kind, role = ref.get("kind", ""), ref.get("name", "")
        label = f"RoleBinding/{attrs.namespace}/{metadata.get('name')} -> {kind}/{role}"
        if kind == "ClusterRole":
            yield label, _rules(rbac.cluster_roles, role)
        elif kind == "Role":
            yield label, _rules(rbac.roles, role, attrs.namespace)


def authorize(user: UserInfo, attrs: RequestAttributes, rbac: RbacObjects) -> Decision:
    """Allow when a bound role has a rule for the request (or it is a discovery path); else deny."""
    discovery = any(attrs.path == p or attrs.path.startswith(p + "/") for p in DISCOVERY_PATHS)
    if not attrs.resource_request and attrs.verb == "get" and discovery:
        return Decision(True, "discovery")
    granted = [
        label for label, rules in _grants(rbac, user, attrs) if any(rule_allows(r, attrs) for r in rules)
    ]
    if granted:
        return Decision(True, f"RBAC: allowed by {granted[0]}", tuple(granted))
    return Decision(False, forbidden_message(user, attrs))


def forbidden_message(user: UserInfo, attrs: RequestAttributes) -> str:
    """The message of a real API server's 403 for this request."""
    if not attrs.resource_request:
        return f'forbidden: User "{user.name}" cannot {attrs.verb} path "{attrs.path}"'
    what = f'{attrs.combined_resource} "{attrs.name}"' if attrs.name else attrs.combined_resource
    if attrs.group:
        what = (
            f'{attrs.resource}.{attrs.group} "{attrs.name}"'
            if attrs.name
            else f"{attrs.resource}.{attrs.group}"
        )
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    return (
        f'{what} is forbidden: User "{user.name}" cannot {attrs.verb} resource "{attrs.combined_resource}" '
        f'in API group "{attrs.group}" {scope}'
    )
