"""Validation a real API server applies to every object: names, label keys and values, annotation keys.

(Custom resources' schemas are not checked: see the apiserver module.) The rules are Kubernetes' own
(k8s.io/apimachinery/pkg/util/validation), so a name or label that a real cluster refuses is refused here
too, and the operator's builders meet them before they meet a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .resources import ResourceType

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Kinds whose names become DNS labels (a Service name is a host name inside the cluster).
_DNS1035_KINDS = {("", "services")}
_DNS1123_LABEL_KINDS = {("", "namespaces")}


def name_problem(resource: ResourceType, name: str) -> str | None:
    """Why ``name`` is not a valid name for this kind, or None."""
    if resource.storage_key in _DNS1035_KINDS:
        if len(name) > 63 or not _DNS1035_LABEL.match(name):
            return (
                f'metadata.name: Invalid value: "{name}": a DNS-1035 label must consist of lower case '
                "alphanumeric characters or '-', start with an alphabetic character, and end with an "
                "alphanumeric character (at most 63 characters)"
            )
        return None
    if resource.storage_key in _DNS1123_LABEL_KINDS:
        if len(name) > 63 or not _DNS1123_LABEL.match(name):
            return (
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower '
                "case alphanumeric characters or '-', and must start and end with an alphanumeric character "
                "(at most 63 characters)"
            )
        return None
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        return (
            f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
            "case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    return None


def _key_problem(field: str, key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return f'{field}: Invalid value: "{key}": the prefix must be a lowercase RFC 1123 subdomain'
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return (
            f"{field}: Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' "
            "or '.', and must start and end with an alphanumeric character (at most 63 characters)"
        )
    return None


def metadata_problems(meta: Mapping[str, Any]) -> list[str]:
    """Problems of label keys and values and of annotation keys."""
    problems = []
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if not isinstance(labels, Mapping) or not isinstance(annotations, Mapping):
        return ["metadata.labels and metadata.annotations must be maps of strings"]
    for key, value in labels.items():
        if (problem := _key_problem("metadata.labels", str(key))) is not None:
            problems.append(problem)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(
                f'metadata.labels: Invalid value: "{value}": a valid label must be an empty string or '
                "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character (at most 63 characters)"
            )
    for key in annotations:
        if (problem := _key_problem("metadata.annotations", str(key))) is not None:
            problems.append(problem)
    return problems
