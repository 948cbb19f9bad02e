"""Pure builders of a resource's replicas: the pod template of a pass (`PodTemplate`, built once) and the
pods of every replica. A replica is a group of `spec.nodes` pods; on a single node it is one pod named
`<name>-<hash>-<i>`.

A multi-node replica `i` is `cards / cardsPerNode` pods named `<name>-<hash>-<i>-<member>`: member 0 is
the leader (it runs the launcher, whose mpirun starts every rank, and serves gRPC), the others are workers
(sshd only, until the leader's mpirun starts their ranks). A headless Service gives each pod the stable
DNS name `<pod>.<headless service>` the leader's hostfile lists; required pod anti-affinity puts the pods
of a group on distinct nodes; the client Service selects leaders only.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from .access import fill_owner_secrets
from .builders import (
    Owner,
    build_pod_spec,
    common_labels,
    owner_reference,
    pod_name,
    selector_labels,
    template_hash,
)
from .constants import (
    LABEL_GROUP_MEMBER,
    LABEL_OWNER,
    LABEL_REPLICA_INDEX,
    LABEL_ROLE,
    LABEL_TEMPLATE_HASH,
    ROLE_LEADER,
    ROLE_WORKER,
    SSH_PORT,
    SSH_PORT_NAME,
)
from .settings import Settings
from .spec import InferenceSpec
from .sshkeys import secret_files, ssh_secret_name

SSH_VOLUME = "ssh"
# Where the Secret's key pair is mounted in every pod of a group (the runtime's --ssh-dir).
SSH_DIR = "/etc/bloomz/ssh"
# Read-only for the owner: sshd refuses host keys and authorized_keys that others can read or write.
SSH_FILE_MODE = 0o400
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
# How long the leader waits for every worker to resolve and accept SSH before giving up (and restarting).
WORKERS_TIMEOUT_S = 600


def headless_service_name(owner_name: str) -> str:
    # A DNS-1035 label (<= 63 characters): it is the pods' subdomain.
    return f"{owner_name[:56].rstrip('-')}-hosts"


def member_name(owner: Owner, hash_: str, index: int, member: int) -> str:
    return f"{pod_name(owner, hash_, index)}-{member}"


def group_hosts(owner: Owner, hash_: str, index: int, nodes: int) -> list[str]:
    """The DNS names of a group's pods, leader first (the hostfile's order: rank 0 lives on the leader)."""
    subdomain = headless_service_name(owner.name)
    return [f"{member_name(owner, hash_, index, m)}.{subdomain}" for m in range(nodes)]


def group_args(spec: InferenceSpec, hosts: list[str]) -> list[str]:
    """What the leader's launcher adds to the usual flags (world size = every rank of the group): where
    the other ranks live and how to reach them."""
    return [
        "--role", ROLE_LEADER,
        "--hosts", ",".join(hosts),
        "--slots-per-host", str(spec.cards_per_node),
        "--ssh-port", str(SSH_PORT),
        "--ssh-dir", SSH_DIR,
        "--workers-timeout-s", str(WORKERS_TIMEOUT_S),
    ]  # fmt: skip


def worker_args() -> list[str]:
    return ["--role", ROLE_WORKER, "--ssh-port", str(SSH_PORT), "--ssh-dir", SSH_DIR]


@dataclass(frozen=True)
class PodTemplate:
    """The pod specs of a resource's replicas, before pods are named: the leader's (member 0, the only pod
    of a single-node replica) and the workers' (None on a single node). `hash` names the template: it
    changes with anything that changes a pod, and it is the pods' template-hash label. Built once per pass;
    `build_replicas` copies it into each pod."""

    leader: dict[str, Any]
    worker: dict[str, Any] | None
    hash: str
    nodes: int = 1


def _worker_spec(leader: dict[str, Any]) -> dict[str, Any]:
    worker = copy.deepcopy(leader)
    (container,) = worker["containers"]
    container["args"] = worker_args()
    # sshd listens on the pod's own address only (never on every interface of a shared network namespace).
    container["env"].append({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    container["ports"] = [{"name": SSH_PORT_NAME, "containerPort": SSH_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe"):
        container.pop(probe, None)
    # A worker is ready once sshd accepts connections; the group serves when its leader is ready.
    container["readinessProbe"] = {
        "tcpSocket": {"port": SSH_PORT},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    return worker


def _unnamed_template(spec: InferenceSpec, settings: Settings) -> PodTemplate:
    """The template with the owner's Secret names left empty: the hash describes what runs, whoever owns
    it, so it is taken here."""
    leader = build_pod_spec(spec, settings)
    if not spec.multi_node:
        return PodTemplate(leader, None, template_hash(leader))
    (container,) = leader["containers"]
    container["volumeMounts"].append({"name": SSH_VOLUME, "mountPath": SSH_DIR, "readOnly": True})
    ssh_volume = {"name": SSH_VOLUME, "secret": {"secretName": "", "defaultMode": SSH_FILE_MODE, "items": []}}
    leader["volumes"].append(ssh_volume)
    worker = _worker_spec(leader)
    hash_ = template_hash(
        {"leader": leader, "worker": worker, "nodes": spec.nodes, "cardsPerNode": spec.cards_per_node}
    )
    return PodTemplate(leader, worker, hash_, spec.nodes)


def current_template_hash(spec: InferenceSpec, settings: Settings) -> str:
    """The template hash the resource's pods should carry, single-node or multi-node."""
    return _unnamed_template(spec, settings).hash


def pod_template(owner: Owner, spec: InferenceSpec, settings: Settings) -> PodTemplate:
    """The resource's pod template for this pass, its Secrets named: the operator's API key, and for a
    group the SSH key pair of this template."""
    template = _unnamed_template(spec, settings)
    for pod_spec in (template.leader, template.worker):
        if pod_spec is None:
            continue
        fill_owner_secrets(pod_spec, owner.name)
        for volume in pod_spec["volumes"]:
            if volume["name"] == SSH_VOLUME:
                volume["secret"]["secretName"] = ssh_secret_name(owner.name)
                files = secret_files(template.hash)
                volume["secret"]["items"] = [{"key": key, "path": path} for key, path in files.items()]
    return template


def _pod(owner: Owner, pod_spec: dict[str, Any], name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": {**common_labels(owner.name), **labels},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": json.loads(json.dumps(pod_spec)),  # an independent copy per pod
    }


def _member_pod(
    owner: Owner, spec: InferenceSpec, template: PodTemplate, index: int, member: int
) -> dict[str, Any]:
    hash_ = template.hash
    name = member_name(owner, hash_, index, member)
    labels = {
        LABEL_TEMPLATE_HASH: hash_,
        LABEL_REPLICA_INDEX: str(index),
        LABEL_ROLE: ROLE_LEADER if member == 0 else ROLE_WORKER,
        LABEL_GROUP_MEMBER: str(member),
    }
    source = template.leader if member == 0 or template.worker is None else template.worker
    pod = _pod(owner, source, name, labels)
    pod_spec = pod["spec"]
    pod_spec["hostname"] = name
    pod_spec["subdomain"] = headless_service_name(owner.name)
    group_selector = {LABEL_OWNER: owner.name, LABEL_TEMPLATE_HASH: hash_, LABEL_REPLICA_INDEX: str(index)}
    pod_spec["affinity"] = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": group_selector}, "topologyKey": HOSTNAME_TOPOLOGY}
            ]
        }
    }
    if member == 0:
        (container,) = pod_spec["containers"]
        hosts = group_hosts(owner, hash_, index, template.nodes)
        container["args"] = [*container["args"], *group_args(spec, hosts)]
    return pod


def build_replicas(
    owner: Owner, spec: InferenceSpec, settings: Settings, template: PodTemplate | None = None
) -> list[list[dict[str, Any]]]:
    """One replica per index, each its `spec.nodes` pods leader first (one pod on a single node)."""
    template = template or pod_template(owner, spec, settings)
    replicas = []
    for index in range(spec.replicas):
        if template.worker is None:
            labels = {LABEL_TEMPLATE_HASH: template.hash, LABEL_REPLICA_INDEX: str(index)}
            replicas.append([_pod(owner, template.leader, pod_name(owner, template.hash, index), labels)])
        else:
            replicas.append([_member_pod(owner, spec, template, index, m) for m in range(template.nodes)])
    return replicas


def build_headless_service(owner: Owner) -> dict[str, Any]:
    """Stable DNS names for every pod of every group, ready or not (workers must resolve before serving)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": headless_service_name(owner.name),
            "namespace": owner.namespace,
            "labels": common_labels(owner.name),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(owner.name),
            # A numeric target port: the leader has no port named ssh and must still get its DNS record.
            "ports": [{"name": SSH_PORT_NAME, "port": SSH_PORT, "targetPort": SSH_PORT, "protocol": "TCP"}],
        },
    }
