"""RBAC of the sandbox API server as pure logic: request attributes and rule matching, table-driven."""

from __future__ import annotations

import pytest
from bloomz_sandbox.apiserver.rbac import (
    RbacObjects,
    RequestAttributes,
    UserInfo,
    authorize,
    forbidden_message,
    request_attributes,
    rule_allows,
    service_account_user,
)

OPERATOR = service_account_user("bloomz-system", "bloomz-operator")
OTHER = service_account_user("bloomz-system", "someone-else")


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/api/v1/namespaces/a/pods", {}, ("list", "", "pods", "", "a", "")),
        ("GET", "/api/v1/namespaces/a/pods", {"watch": "true"}, ("watch", "", "pods", "", "a", "")),
        ("GET", "/api/v1/pods", {"watch": "1"}, ("watch", "", "pods", "", "", "")),
        ("GET", "/api/v1/namespaces/a/pods/p", {}, ("get", "", "pods", "", "a", "p")),
        ("PATCH", "/api/v1/namespaces/a/pods/p/status", {}, ("patch", "", "pods", "status", "a", "p")),
        ("PUT", "/api/v1/namespaces/a/pods/p", {}, ("update", "", "pods", "", "a", "p")),
        ("POST", "/api/v1/namespaces/a/events", {}, ("create", "", "events", "", "a", "")),
        ("DELETE", "/api/v1/namespaces/a/pods/p", {}, ("delete", "", "pods", "", "a", "p")),
        ("DELETE", "/api/v1/namespaces/a/pods", {}, ("deletecollection", "", "pods", "", "a", "")),
        ("GET", "/api/v1/namespaces/a", {}, ("get", "", "namespaces", "", "a", "a")),
        ("GET", "/api/v1/namespaces", {}, ("list", "", "namespaces", "", "", "")),
        ("GET", "/api/v1/nodes/n1", {}, ("get", "", "nodes", "", "", "n1")),
        (
            "GET",
            "/apis/inference.bloomz.dev/v1alpha1/namespaces/a/bloomzinferences",
            {"watch": "true", "fieldSelector": "metadata.name=x"},
            ("watch", "inference.bloomz.dev", "bloomzinferences", "", "a", "x"),
        ),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/a/deployments/d/scale",
            {},
            ("patch", "apps", "deployments", "scale", "a", "d"),
        ),
        (
            "GET",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            {"fieldSelector": "metadata.name!=x"},
            ("list", "apiextensions.k8s.io", "customresourcedefinitions", "", "", ""),
        ),
    ],
)
def test_request_attributes(
    method: str, path: str, query: dict[str, str], expected: tuple[str, str, str, str, str, str]
) -> None:
    attrs = request_attributes(method, path, query)
    assert attrs.resource_request
    assert (
        attrs.verb,
        attrs.group,
        attrs.resource,
        attrs.subresource,
        attrs.namespace,
        attrs.name,
    ) == expected


@pytest.mark.parametrize("path", ["/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/version", "/"])
def test_discovery_is_non_resource_and_open_to_everyone_authenticated(path: str) -> None:
    attrs = request_attributes("GET", path)
    assert not attrs.resource_request
    assert authorize(OTHER, attrs, RbacObjects()).allowed == (path != "/")


def _attrs(
    verb: str, resource: str, *, group: str = "", sub: str = "", ns: str = "a", name: str = ""
) -> RequestAttributes:
    return RequestAttributes(
        verb=verb, path="/x", group=group, resource=resource, subresource=sub, namespace=ns, name=name
    )


def _rule(resources: str, verbs: str, groups: str = "", names: str = "") -> dict:
    """A PolicyRule from comma-separated lists (short table rows)."""
    rule = {"apiGroups": groups.split(","), "resources": resources.split(","), "verbs": verbs.split(",")}
    return {**rule, "resourceNames": names.split(",")} if names else rule


def _path(path: str) -> RequestAttributes:
    return RequestAttributes("get", path, resource_request=False)


@pytest.mark.parametrize(
    ("rule", "attrs", "allowed"),
    [
        (_rule("pods", "get"), _attrs("get", "pods"), True),
        (_rule("pods", "get"), _attrs("list", "pods"), False),
        (_rule("pods", "*"), _attrs("delete", "pods"), True),
        (_rule("pods", "get", groups="apps"), _attrs("get", "pods"), False),
        (_rule("pods", "get", groups="*"), _attrs("get", "pods", group="x"), True),
        # a subresource needs its own rule; the parent's does not cover it, nor the reverse
        (_rule("pods", "patch"), _attrs("patch", "pods", sub="status"), False),
        (_rule("pods/status", "patch"), _attrs("patch", "pods", sub="status"), True),
        (_rule("pods/status", "patch"), _attrs("patch", "pods"), False),
        (_rule("*/status", "patch"), _attrs("patch", "svc", sub="status"), True),
        (_rule("*", "patch"), _attrs("patch", "pods", sub="log"), True),
        # resourceNames restrict named requests; a list (no name) is not covered
        (_rule("cm", "get", names="x"), _attrs("get", "cm", name="x"), True),
        (_rule("cm", "get", names="x"), _attrs("get", "cm", name="y"), False),
        (_rule("cm", "list", names="x"), _attrs("list", "cm"), False),
        # resource rules never match non-resource paths, and nonResourceURLs never match resources
        ({"nonResourceURLs": ["/metrics"], "verbs": ["get"]}, _attrs("get", "metrics"), False),
        (_rule("*", "*", groups="*"), _path("/metrics"), False),
        ({"nonResourceURLs": ["/metrics"], "verbs": ["get"]}, _path("/metrics"), True),
        ({"nonResourceURLs": ["/logs/*"], "verbs": ["get"]}, _path("/logs/a"), True),
    ],
)
def test_rule_allows(rule: dict, attrs: RequestAttributes, allowed: bool) -> None:
    assert rule_allows(rule, attrs) is allowed


POD_READER = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
NODE_READER = {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}


def _meta(name: str, namespace: str = "") -> dict:
    return {"name": name, **({"namespace": namespace} if namespace else {})}


def _binding(name: str, role_kind: str, role: str, subject: dict, namespace: str = "") -> dict:
    return {
        "metadata": _meta(name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [subject],
    }


SA = {"kind": "ServiceAccount", "name": "bloomz-operator", "namespace": "bloomz-system"}
CLUSTER = RbacObjects(
    cluster_roles=[
        {"metadata": _meta("pods"), "rules": [POD_READER]},
        {"metadata": _meta("nodes"), "rules": [NODE_READER]},
    ],
    roles=[{"metadata": _meta("pods", "team-a"), "rules": [POD_READER]}],
    cluster_role_bindings=[_binding("nodes", "ClusterRole", "nodes", SA)],
    role_bindings=[
        _binding("pods-role", "Role", "pods", SA, "team-a"),
        _binding("pods-cr", "ClusterRole", "pods", SA, "team-b"),
        # a RoleBinding's ServiceAccount subject without a namespace means the binding's namespace
        _binding(
            "local", "ClusterRole", "pods", {"kind": "ServiceAccount", "name": "bloomz-operator"}, "team-c"
        ),
        # a Role of another namespace does not count, whatever the name
        _binding("wrong-ns", "Role", "pods", SA, "team-d"),
    ],
)


@pytest.mark.parametrize(
    ("user", "attrs", "allowed"),
    [
        (OPERATOR, _attrs("get", "nodes", ns="", name="n"), True),  # ClusterRoleBinding: cluster-wide
        (OPERATOR, _attrs("list", "pods", ns="team-a"), True),  # RoleBinding -> Role
        (OPERATOR, _attrs("list", "pods", ns="team-b"), True),  # RoleBinding -> ClusterRole, that namespace
        (OPERATOR, _attrs("list", "pods", ns="team-c"), False),  # subject without namespace: team-c's SA
        (service_account_user("team-c", "bloomz-operator"), _attrs("list", "pods", ns="team-c"), True),
        (OPERATOR, _attrs("list", "pods", ns="team-d"), False),  # the Role lives in team-a only
        (OPERATOR, _attrs("list", "pods", ns="default"), False),  # not bound there
        (OPERATOR, _attrs("list", "pods", ns=""), False),  # RoleBindings never grant cluster-wide lists
        (OPERATOR, _attrs("delete", "pods", ns="team-a", name="p"), False),  # verb not granted
        (OTHER, _attrs("get", "nodes", ns="", name="n"), False),  # another service account
        (UserInfo("bob", ("devs",)), _attrs("get", "nodes", ns=""), False),
    ],
)
def test_authorize_through_bindings(user: UserInfo, attrs: RequestAttributes, allowed: bool) -> None:
    decision = authorize(user, attrs, CLUSTER)
    assert decision.allowed is allowed, decision.reason
    if allowed:
        assert decision.granted_by
    else:
        assert decision.reason == forbidden_message(user, attrs)


def test_group_and_user_subjects() -> None:
    rbac = RbacObjects(
        cluster_roles=[{"metadata": _meta("nodes"), "rules": [NODE_READER]}],
        cluster_role_bindings=[
            _binding("g", "ClusterRole", "nodes", {"kind": "Group", "name": "system:serviceaccounts:x"}),
            _binding("u", "ClusterRole", "nodes", {"kind": "User", "name": "bob"}),
        ],
    )
    nodes = _attrs("get", "nodes", ns="", name="n")
    assert authorize(service_account_user("x", "any"), nodes, rbac).allowed
    assert not authorize(service_account_user("y", "any"), nodes, rbac).allowed
    assert authorize(UserInfo("bob"), nodes, rbac).allowed
    assert not authorize(UserInfo("bobby"), nodes, rbac).allowed


def test_forbidden_messages_read_like_a_real_api_server() -> None:
    assert forbidden_message(OPERATOR, _attrs("patch", "pods", sub="status", ns="a", name="p")) == (
        'pods/status "p" is forbidden: User "system:serviceaccount:bloomz-system:bloomz-operator" '
        'cannot patch resource "pods/status" in API group "" in the namespace "a"'
    )
    crds = _attrs("list", "customresourcedefinitions", group="apiextensions.k8s.io", ns="")
    assert forbidden_message(OPERATOR, crds) == (
        "customresourcedefinitions.apiextensions.k8s.io is forbidden: User "
        '"system:serviceaccount:bloomz-system:bloomz-operator" cannot list resource '
        '"customresourcedefinitions" in API group "apiextensions.k8s.io" at the cluster scope'
    )
