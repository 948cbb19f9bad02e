"""Authentication, RBAC enforcement and the audit log of the sandbox API server.

Service-account tokens are issued by the server itself (the TokenRequest API, ``POST
.../serviceaccounts/<name>/token``, as the kubelet and ``kubectl create token`` use it); a request with
such a token is authorized against the RBAC objects in the store (``rbac``) and refused with a
Kubernetes-shaped 403 otherwise. Every other bearer token is the sandbox's administrator
(``system:masters``, unrestricted), so the admin kubeconfig and older clients keep working. A token
that looks issued but is not (``sandbox-sa-...``) is a 401. Every request lands in the audit log.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from . import errors
from .rbac import (
    Decision,
    RbacObjects,
    RequestAttributes,
    UserInfo,
    authorize,
    request_attributes,
    service_account_user,
)
from .store import ObjectStore

ADMIN = UserInfo("sandbox-admin", ("system:masters", "system:authenticated"))
TOKEN_PREFIX = "sandbox-sa-"
AUDIT_LIMIT = 200_000  # records kept (oldest dropped): a long `make sandbox` must not grow without bound


@dataclass(frozen=True)
class AuditRecord:
    user: str
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    path: str = ""


class AccessControl:
    """Tokens, authorization and audit for one store (used only inside the server's event loop)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.tokens: dict[str, UserInfo] = {}
        self.audit: collections.deque[AuditRecord] = collections.deque(maxlen=AUDIT_LIMIT)
        self._audit_file: TextIO | None = None  # also one JSON line per record, for other processes

    def write_audit_to(self, path: Path | None) -> None:
        if self._audit_file is not None:
            self._audit_file.close()
            self._audit_file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._audit_file = path.open("a", encoding="utf-8", buffering=1)

    # ----- authentication
    def authenticate(self, authorization: str) -> UserInfo:
        scheme, _, token = authorization.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if token.startswith(TOKEN_PREFIX):
            user = self.tokens.get(token)
            if user is None:
                raise errors.ApiError(401, "Unauthorized", "Unauthorized")
            return user
        return ADMIN

    def issue_token(self, namespace: str, name: str, expiration_seconds: int = 3600) -> dict[str, Any]:
        """A TokenRequest's answer for an existing service account (404 when it does not exist)."""
        account_type = self.store.find_type("", "v1", "serviceaccounts")
        assert account_type is not None
        self.store.get(account_type, namespace, name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        self.tokens[token] = service_account_user(namespace, name)
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            seconds=expiration_seconds
        )
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "audiences": ["https://kubernetes.default.svc"],
                "expirationSeconds": expiration_seconds,
            },
            "status": {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }

    # ----- authorization
    def rbac_objects(self) -> RbacObjects:
        def objects(plural: str) -> list[Mapping[str, Any]]:
            resource = self.store.find_type("rbac.authorization.k8s.io", "v1", plural)
            return list(self.store.list_objects(resource, None)) if resource is not None else []

        return RbacObjects(
            roles=objects("roles"),
            cluster_roles=objects("clusterroles"),
            role_bindings=objects("rolebindings"),
            cluster_role_bindings=objects("clusterrolebindings"),
        )

    def check(
        self, method: str, path: str, query: Mapping[str, str], authorization: str
    ) -> tuple[UserInfo, RequestAttributes, Decision]:
        """Who asks and what; raises the 401/403 ``ApiError`` (after auditing it) when refused."""
        attrs = request_attributes(method, path, query)
        try:
            user = self.authenticate(authorization)
        except errors.ApiError as error:
            self.record(UserInfo("system:anonymous"), attrs, error.code)
            raise
        if user is ADMIN:
            return user, attrs, Decision(True, "system:masters")
        decision = authorize(user, attrs, self.rbac_objects())
        if not decision.allowed:
            self.record(user, attrs, 403)
            raise errors.ApiError(
                403,
                "Forbidden",
                decision.reason,
                {"name": attrs.name, "group": attrs.group, "kind": attrs.resource} if attrs.resource else {},
            )
        return user, attrs, decision

    def record(self, user: UserInfo, attrs: RequestAttributes, code: int) -> None:
        entry = AuditRecord(
            user=user.name,
            verb=attrs.verb,
            group=attrs.group,
            resource=attrs.resource,
            subresource=attrs.subresource,
            namespace=attrs.namespace,
            name=attrs.name,
            code=code,
            path=attrs.path,
        )
        self.audit.append(entry)
        if self._audit_file is not None:
            self._audit_file.write(json.dumps(dataclasses.asdict(entry)) + "\n")
