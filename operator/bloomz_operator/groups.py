"""Pure builders for multi-node replicas: a replica with more cards than one node has is a group of pods.

Group `i` of a resource is `cards / cardsPerNode` pods named `<name>-<hash>-<i>-<member>`: member 0 is the
leader (it runs the launcher, whose mpirun starts every rank, and serves gRPC), the others are workers (sshd
only, until the leader's mpirun starts their ranks). A headless Service gives each pod the stable DNS name
`<pod>.<headless service>` the leader's hostfile lists; required pod anti-affinity puts the pods of a group
on distinct nodes; the client Service selects leaders only.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from .builders import (
    Owner,
    build_pod_spec,
    common_labels,
    desired_template_hash,
    fill_owner_secrets,
    owner_reference,
    pod_name,
    runtime_args,
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


def ssh_client_patterns(owner: Owner, hash_: str) -> list[str]:
    """Where a group template's SSH key is accepted from: the DNS names of that template's leaders (any
    group index), as sshd sees them by reverse lookup - the headless Service's PTR records
    (`<pod>.<subdomain>.<namespace>.svc.<cluster domain>`) and, where a hosts file answers, the short
    `<pod>.<subdomain>`. Workers never ssh (mpirun runs with no tree spawn)."""
    leader = f"{pod_name(owner, hash_, 0).removesuffix('-0')}-*-0.{headless_service_name(owner.name)}"
    return [leader, f"{leader}.{owner.namespace}.svc.*"]


def leader_args(spec: InferenceSpec, hosts: list[str]) -> list[str]:
    """The usual launcher flags (world size = every rank of the group) plus where the other ranks live."""
    return [
        *runtime_args(spec),
        "--role", ROLE_LEADER,
        "--hosts", ",".join(hosts),
        "--slots-per-host", str(spec.cards_per_node),
        "--ssh-port", str(SSH_PORT),
        "--ssh-dir", SSH_DIR,
        "--workers-timeout-s", str(WORKERS_TIMEOUT_S),
    ]  # fmt: skip


def worker_args() -> list[str]:
    return ["--role", ROLE_WORKER, "--ssh-port", str(SSH_PORT), "--ssh-dir", SSH_DIR]


def _ssh_volume() -> dict[str, Any]:
    return {
        "name": SSH_VOLUME,
        "secret": {
            "secretName": "",  # filled in per owner
            "defaultMode": SSH_FILE_MODE,
            "items": [],  # filled in per template: its own key pair
        },
    }


def group_template(spec: InferenceSpec, settings: Settings) -> dict[str, dict[str, Any]]:
    """The leader's and the workers' pod specs before names are known (the template hash is taken here)."""
    base = build_pod_spec(spec, settings)
    (leader_container,) = base["containers"]
    leader_container["volumeMounts"].append({"name": SSH_VOLUME, "mountPath": SSH_DIR, "readOnly": True})
    base["volumes"].append(_ssh_volume())
    worker = copy.deepcopy(base)
    (worker_container,) = worker["containers"]
    worker_container["args"] = worker_args()
    # sshd listens on the pod's own address only (never on every interface of a shared network namespace).
    worker_container["env"].append(
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    )
    worker_container["ports"] = [{"name": SSH_PORT_NAME, "containerPort": SSH_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe"):
        worker_container.pop(probe, None)
    # A worker is ready once sshd accepts connections; the group serves when its leader is ready.
    worker_container["readinessProbe"] = {
        "tcpSocket": {"port": SSH_PORT},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    return {"leader": base, "worker": worker}


def group_template_hash(spec: InferenceSpec, settings: Settings) -> str:
    template = group_template(spec, settings)
    return template_hash({**template, "nodes": spec.nodes, "cardsPerNode": spec.cards_per_node})


def _member_pod(
    owner: Owner, pod_spec: dict[str, Any], *, hash_: str, index: int, member: int
) -> dict[str, Any]:
    role = ROLE_LEADER if member == 0 else ROLE_WORKER
    name = member_name(owner, hash_, index, member)
    labels = {
        **common_labels(owner.name),
        LABEL_TEMPLATE_HASH: hash_,
        LABEL_REPLICA_INDEX: str(index),
        LABEL_ROLE: role,
        LABEL_GROUP_MEMBER: str(member),
    }
    spec = json.loads(json.dumps(pod_spec))  # an independent copy per pod
    spec["hostname"] = name
    spec["subdomain"] = headless_service_name(owner.name)
    for volume in spec["volumes"]:
        if volume["name"] == SSH_VOLUME:
            volume["secret"]["secretName"] = ssh_secret_name(owner.name)
            volume["secret"]["items"] = [{"key": k, "path": path} for k, path in secret_files(hash_).items()]
    fill_owner_secrets(spec, owner.name)
    group_selector = {LABEL_OWNER: owner.name, LABEL_TEMPLATE_HASH: hash_, LABEL_REPLICA_INDEX: str(index)}
    spec["affinity"] = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": group_selector}, "topologyKey": HOSTNAME_TOPOLOGY}
            ]
        }
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec,
    }


def build_groups(owner: Owner, spec: InferenceSpec, settings: Settings) -> list[list[dict[str, Any]]]:
    """One group of `spec.nodes` pods per replica, leader first."""
    template = group_template(spec, settings)
    hash_ = group_template_hash(spec, settings)
    groups = []
    for index in range(spec.replicas):
        hosts = group_hosts(owner, hash_, index, spec.nodes)
        members = []
        for member in range(spec.nodes):
            pod = _member_pod(
                owner,
                template["leader" if member == 0 else "worker"],
                hash_=hash_,
                index=index,
                member=member,
            )
            if member == 0:
                (container,) = pod["spec"]["containers"]
                container["args"] = leader_args(spec, hosts)
            members.append(pod)
        groups.append(members)
    return groups


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


def current_template_hash(spec: InferenceSpec, settings: Settings) -> str:
    """The template hash the resource's pods should carry, single-node or multi-node."""
    return group_template_hash(spec, settings) if spec.multi_node else desired_template_hash(spec, settings)
