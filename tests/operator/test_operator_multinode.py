"""Multi-node replicas, operator side: spec and CRD rule, group builders, SSH Secret, planner, status."""

from __future__ import annotations

import base64
import logging
import re
import subprocess
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import yaml
from bloomz_operator.builders import Owner, build_pod_spec, build_service, template_hash
from bloomz_operator.constants import (
    LABEL_GROUP_MEMBER,
    LABEL_REPLICA_INDEX,
    LABEL_ROLE,
    LABEL_TEMPLATE_HASH,
    SSH_PORT,
)
from bloomz_operator.groups import (
    SSH_DIR,
    build_headless_service,
    build_replicas,
    current_template_hash,
    group_hosts,
    headless_service_name,
)
from bloomz_operator.kubeapi import KubeAPI
from bloomz_operator.ownership import owner_tag
from bloomz_operator.planning import plan_replicas
from bloomz_operator.reconciler import reconcile
from bloomz_operator.replicas import find_broken
from bloomz_operator.settings import Settings
from bloomz_operator.spec import SpecError, parse_spec
from bloomz_operator.sshkeys import build_ssh_secret, generate_key_pair, ssh_secret_name, template_hashes
from bloomz_operator.status import compute_status
from cluster_fakes import FakeAPI, build_pods, creates, deletes, names, observed
from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "bloomzinferences.inference.bloomz.dev.yaml"
OWNER = Owner(name="big", namespace="ml", uid="uid-big")
SPEC_16 = {"model": "bigscience/bloomz", "cards": 16, "cardsPerNode": 8}
LOG = logging.getLogger("test")


def groups_of(spec: dict[str, Any], **extra: Any) -> list[list[dict[str, Any]]]:
    return build_replicas(OWNER, parse_spec({**spec, **extra}), Settings())


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod["spec"]["containers"]
    return c


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# --- spec and CRD ---------------------------------------------------------------------------------------


def test_cards_per_node_defaults_to_a_gaudi2_server_and_splits_replicas() -> None:
    assert parse_spec({"model": "m"}).cards_per_node == 8
    assert parse_spec({"model": "m", "cards": 8}).nodes == 1
    assert parse_spec({"model": "m", "cards": 4, "cardsPerNode": 8}).nodes == 1
    big = parse_spec(SPEC_16)
    assert (big.nodes, big.multi_node, big.cards_per_pod) == (2, True, 8)
    assert parse_spec({"model": "m", "cards": 32, "cardsPerNode": 8}).nodes == 4


@pytest.mark.parametrize(("cards", "per_node"), [(12, 8), (9, 8), (10, 4)])
def test_cards_not_dividing_into_nodes_is_an_invalid_spec(cards: int, per_node: int) -> None:
    with pytest.raises(SpecError, match=r"multiple of it"):
        parse_spec({"model": "m", "cards": cards, "cardsPerNode": per_node})


def test_invalid_split_is_reported_in_status_when_the_api_server_lets_it_through() -> None:
    # The emulator does not evaluate CEL: the operator refuses the spec itself, with the same words.
    outcome = reconcile(
        cast(KubeAPI, FakeAPI()),
        Settings(),
        owner=OWNER,
        spec={"model": "m", "cards": 12, "cardsPerNode": 8},
        generation=1,
        old_status=None,
        logger=LOG,
    )
    assert outcome.status["phase"] == "Failed" and outcome.actions == []
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert "spec.cards (12) must be at most spec.cardsPerNode (8) or a multiple of it" in ready["message"]


@pytest.fixture(scope="module")
def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


def cel_rule_holds(rule: str, cards: int, cards_per_node: int) -> bool:
    """Evaluate the CRD's CEL rule (only `self.<field>`, integers, %, <=, ==, || occur in it)."""
    assert re.fullmatch(r"[\w.%<=| ]+", rule), rule
    python = rule.replace("||", " or ").replace("self.cardsPerNode", "p").replace("self.cards", "c")
    return bool(eval(python, {"__builtins__": {}}, {"c": cards, "p": cards_per_node}))


def test_crd_rule_refuses_exactly_what_the_operator_refuses(spec_schema: dict[str, Any]) -> None:
    (validation,) = spec_schema["x-kubernetes-validations"]
    assert "cardsPerNode" in validation["message"]
    props = spec_schema["properties"]["cardsPerNode"]
    assert (props["type"], props["minimum"], props["default"]) == ("integer", 1, 8)
    for cards in range(1, 65):
        for per_node in range(1, 17):
            try:
                parse_spec({"model": "m", "cards": cards, "cardsPerNode": per_node})
                accepted = True
            except SpecError:
                accepted = False
            assert cel_rule_holds(validation["rule"], cards, per_node) == accepted, (cards, per_node)


def test_crd_refuses_a_zero_cards_per_node(spec_schema: dict[str, Any]) -> None:
    schema = {k: v for k, v in spec_schema.items() if k != "x-kubernetes-validations"}
    validator = jsonschema.Draft7Validator(schema)
    validator.validate({"model": "m", "cards": 16, "cardsPerNode": 8})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"model": "m", "cards": 16, "cardsPerNode": 0})


def test_multi_node_example_is_a_valid_two_node_group(spec_schema: dict[str, Any]) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "bloomz-176b-2nodes.yaml").read_text())
    spec = parse_spec(doc["spec"])
    assert (spec.model, spec.device, spec.cards, spec.nodes) == ("bigscience/bloomz", "hpu", 16, 2)
    assert cel_rule_holds(spec_schema["x-kubernetes-validations"][0]["rule"], spec.cards, spec.cards_per_node)


# --- builders -------------------------------------------------------------------------------------------


def test_single_node_resources_are_built_exactly_as_before() -> None:
    spec = parse_spec({"model": "bigscience/bloomz-7b1", "cards": 8})
    (pod,) = build_pods(OWNER, spec, Settings())
    assert LABEL_ROLE not in pod["metadata"]["labels"] and "affinity" not in pod["spec"]
    assert "--role" not in container(pod)["args"]
    assert current_template_hash(spec, Settings()) == template_hash(build_pod_spec(spec, Settings()))
    assert build_service(OWNER)["spec"]["selector"] == {
        "app.kubernetes.io/name": "bloomz-runtime",
        "inference.bloomz.dev/name": "big",
    }


def test_a_group_is_a_leader_and_workers_with_stable_dns_names() -> None:
    groups = groups_of(SPEC_16, replicas=2)
    assert [len(g) for g in groups] == [2, 2]
    hash_ = current_template_hash(parse_spec(SPEC_16 | {"replicas": 2}), Settings())
    for index, group in enumerate(groups):
        names = [p["metadata"]["name"] for p in group]
        tag = owner_tag(OWNER.uid)
        assert names == [f"big-{tag}-{hash_}-{index}-0", f"big-{tag}-{hash_}-{index}-1"]
        roles = [p["metadata"]["labels"][LABEL_ROLE] for p in group]
        assert roles == ["leader", "worker"]
        for member, pod in enumerate(group):
            labels = pod["metadata"]["labels"]
            assert labels[LABEL_REPLICA_INDEX] == str(index) and labels[LABEL_GROUP_MEMBER] == str(member)
            assert labels[LABEL_TEMPLATE_HASH] == hash_
            assert pod["spec"]["hostname"] == pod["metadata"]["name"]
            assert pod["spec"]["subdomain"] == headless_service_name("big") == "big-hosts"
            assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-big"
        assert group_hosts(OWNER, hash_, index, 2) == [f"{n}.big-hosts" for n in names]


def test_leader_runs_the_launcher_over_the_whole_group_and_workers_run_sshd() -> None:
    leader, worker = groups_of(SPEC_16)[0]
    args = container(leader)["args"]
    assert (
        container(leader)["command"]
        == container(worker)["command"]
        == ["python3", "-m", "bloomz_runtime.launch"]
    )
    assert flag(args, "--world-size") == "16"  # every rank of the group
    assert flag(args, "--role") == "leader"
    names = [leader["metadata"]["name"], worker["metadata"]["name"]]
    assert flag(args, "--hosts") == ",".join(f"{n}.big-hosts" for n in names)
    assert flag(args, "--slots-per-host") == "8"
    assert flag(args, "--ssh-port") == str(SSH_PORT) and flag(args, "--ssh-dir") == SSH_DIR
    assert (
        args[: args.index("--role")]
        == build_pod_spec(parse_spec(SPEC_16), Settings())["containers"][0]["args"]
    )
    assert container(worker)["args"] == [
        "--role",
        "worker",
        "--ssh-port",
        str(SSH_PORT),
        "--ssh-dir",
        SSH_DIR,
    ]
    # The leader serves gRPC (probed over gRPC health); a worker is ready once sshd accepts connections.
    assert container(leader)["readinessProbe"]["grpc"]["port"] == 50051
    assert container(worker)["readinessProbe"]["tcpSocket"] == {"port": SSH_PORT}
    assert "startupProbe" not in container(worker) and "livenessProbe" not in container(worker)
    assert {p["name"] for p in container(worker)["ports"]} == {"ssh"}


def test_every_pod_of_a_group_asks_for_one_nodes_cards_on_its_own_node() -> None:
    for pod in groups_of(SPEC_16)[0]:
        c = container(pod)
        assert c["resources"]["limits"]["habana.ai/gaudi"] == "8"
        assert pod["spec"]["hostIPC"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_NICE"]}
        (term,) = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == {
            "inference.bloomz.dev/name": "big",
            LABEL_TEMPLATE_HASH: pod["metadata"]["labels"][LABEL_TEMPLATE_HASH],
            LABEL_REPLICA_INDEX: "0",
        }
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["HCCL_SOCKET_IFNAME"] == "eth0"  # Gaudi scale-out over the pod's interface
        assert env["PT_HPU_LAZY_MODE"] == "1"
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["ssh"] == {"name": "ssh", "mountPath": SSH_DIR, "readOnly": True}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        secret = volumes["ssh"]["secret"]
        assert secret["secretName"] == ssh_secret_name("big") and secret["defaultMode"] == 0o400
        files = {item["key"]: item["path"] for item in secret["items"]}
        hash_ = pod["metadata"]["labels"][LABEL_TEMPLATE_HASH]
        assert files == {
            f"{hash_}.id_ed25519": "id_ed25519",
            f"{hash_}.id_ed25519.pub": "id_ed25519.pub",
            f"{hash_}.authorized_keys": "authorized_keys",
        }
    cpu = groups_of({"model": "/models/tiny", "device": "cpu", "cards": 4, "cardsPerNode": 2})[0]
    assert container(cpu[1])["resources"]["requests"]["cpu"] == "2"
    assert "HCCL_SOCKET_IFNAME" not in {e["name"] for e in container(cpu[0])["env"]}


def test_spec_env_overrides_the_scale_out_default() -> None:
    leader = groups_of(SPEC_16, env=[{"name": "HCCL_SOCKET_IFNAME", "value": "net1"}])[0][0]
    env = [e for e in container(leader)["env"] if e["name"] == "HCCL_SOCKET_IFNAME"]
    assert env == [{"name": "HCCL_SOCKET_IFNAME", "value": "net1"}]


def test_template_hash_follows_the_group_shape() -> None:
    base = current_template_hash(parse_spec(SPEC_16), Settings())
    assert base == current_template_hash(parse_spec(dict(SPEC_16)), Settings())
    assert base != current_template_hash(parse_spec(SPEC_16 | {"cards": 32}), Settings())
    assert base != current_template_hash(parse_spec(SPEC_16 | {"cards": 16, "cardsPerNode": 4}), Settings())
    assert base != current_template_hash(parse_spec(SPEC_16 | {"cards": 8}), Settings())


def test_services_headless_for_the_group_and_leaders_only_for_clients() -> None:
    headless = build_headless_service(OWNER)
    assert headless["metadata"]["name"] == "big-hosts"
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"] == {
        "app.kubernetes.io/name": "bloomz-runtime",
        "inference.bloomz.dev/name": "big",
    }
    assert headless["metadata"]["ownerReferences"][0]["uid"] == "uid-big"
    client = build_service(OWNER, leaders_only=True)
    assert client["spec"]["selector"][LABEL_ROLE] == "leader"
    leader, worker = groups_of(SPEC_16)[0]
    selects = client["spec"]["selector"].items()
    assert selects <= leader["metadata"]["labels"].items()
    assert not selects <= worker["metadata"]["labels"].items()


# --- SSH key pair ---------------------------------------------------------------------------------------


def test_key_pair_is_ed25519_in_openssh_format_and_matches(tmp_path: Path) -> None:
    keys = generate_key_pair("bloomz-operator@ml/big")
    assert keys.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert keys.public_openssh.startswith("ssh-ed25519 ") and keys.public_openssh.endswith(
        " bloomz-operator@ml/big"
    )
    private = serialization.load_ssh_private_key(keys.private_openssh.encode(), password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert keys.public_openssh.split()[:2] == public.decode().split()
    # OpenSSH itself reads the private key and derives the same public key.
    key_file = tmp_path / "id_ed25519"
    key_file.write_text(keys.private_openssh)
    key_file.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key_file)], capture_output=True, text=True, check=True
    )
    assert derived.stdout.split()[:2] == keys.public_openssh.split()[:2]
    assert generate_key_pair("x").public_openssh != generate_key_pair("x").public_openssh


def test_secret_holds_the_key_pair_and_belongs_to_the_resource() -> None:
    keys = generate_key_pair("c")
    secret = build_ssh_secret(OWNER, keys, "h1")
    assert secret["metadata"]["name"] == "big-ssh" and secret["metadata"]["namespace"] == "ml"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-big"
    assert secret["type"] == "kubernetes.io/ssh-auth"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(data) == {"ssh-privatekey", "h1.id_ed25519", "h1.id_ed25519.pub", "h1.authorized_keys"}
    assert data["ssh-privatekey"] == data["h1.id_ed25519"] == keys.private_openssh
    assert data["h1.id_ed25519.pub"] == data["h1.authorized_keys"] == keys.public_openssh + "\n"


# --- planner --------------------------------------------------------------------------------------------


def test_groups_are_created_whole_and_left_alone_once_there() -> None:
    want = groups_of(SPEC_16, replicas=2)
    assert creates(plan_replicas(want, [])) == names(want[0]) + names(want[1])
    running = [observed(p) for g in want for p in g]
    assert plan_replicas(want, running) == []
    loading = [observed(p, ready=False) for g in want for p in g]
    assert plan_replicas(want, loading) == []


def test_a_failed_worker_takes_its_whole_group_down_and_the_group_comes_back() -> None:
    want = groups_of({**SPEC_16, "cards": 24}, replicas=2)
    group0 = [observed(p) for p in want[0]]
    group0[2] = observed(want[0][2], phase="Failed", ready=False, reason="Evicted", message="node lost")
    group1 = [observed(p) for p in want[1]]
    (failure,) = find_broken(want, group0 + group1)
    assert (failure.group, failure.pod, failure.role, failure.reason) == (
        0,
        names(want[0])[2],
        "worker",
        "Evicted",
    )
    assert "node lost" in failure.message
    actions = plan_replicas(want, group0 + group1)
    assert sorted(deletes(actions)) == sorted(names(want[0])) and creates(actions) == []
    assert all(names(want[0])[2] in a.reason for a in actions)  # type: ignore[union-attr]
    # While its pods terminate, the group holds its devices: nothing is created.
    going = [observed(p, terminating=True) for p in want[0]]
    assert plan_replicas(want, going + group1) == []
    assert find_broken(want, going + group1) == []
    # Once every pod of it is gone, the group is created again, whole.
    assert creates(plan_replicas(want, group1)) == names(want[0])


@pytest.mark.parametrize("member", [0, 1])
def test_a_deleted_or_vanished_member_recreates_the_group(member: int) -> None:
    want = groups_of(SPEC_16)
    other = 1 - member
    vanished = [observed(want[0][other])]
    (failure,) = find_broken(want, vanished)
    assert failure.reason == "MemberLost" and failure.role == ("leader" if member == 0 else "worker")
    assert deletes(plan_replicas(want, vanished)) == [names(want[0])[other]]
    deleted = [observed(want[0][member], terminating=True), observed(want[0][other])]
    (failure,) = find_broken(want, deleted)
    assert failure.reason == "MemberDeleted"
    assert deletes(plan_replicas(want, deleted)) == [names(want[0])[other]]


def test_scale_down_removes_whole_groups() -> None:
    big = groups_of(SPEC_16, replicas=3)
    small = groups_of(SPEC_16, replicas=1)
    actions = plan_replicas(small, [observed(p) for g in big for p in g])
    # Leaders first: a leader drains its accepted requests while its workers still run its ranks.
    assert sorted(deletes(actions)) == sorted([names(big[1])[0], names(big[2])[0]]) and creates(actions) == []
    draining = [
        observed(p, terminating=member == 0 and index > 0)
        for index, g in enumerate(big)
        for member, p in enumerate(g)
    ]
    assert plan_replicas(small, draining) == []
    # Once a leader is gone, its workers go.
    leaders_gone = [
        observed(p) for index, g in enumerate(big) for member, p in enumerate(g) if index == 0 or member > 0
    ]
    assert sorted(deletes(plan_replicas(small, leaders_gone))) == sorted([names(big[1])[1], names(big[2])[1]])


def test_switching_a_ready_single_node_replica_to_a_group_deletes_before_creating() -> None:
    (old,) = build_pods(OWNER, parse_spec({"model": "bigscience/bloomz", "cards": 8}), Settings())
    want = groups_of(SPEC_16)
    step1 = plan_replicas(want, [observed(old)])
    assert deletes(step1) == names([old]) and creates(step1) == []  # never 8 + 16 cards at once
    assert plan_replicas(want, [observed(old, terminating=True)]) == []
    assert creates(plan_replicas(want, [])) == names(want[0])


def test_rollout_with_surge_replaces_a_ready_group_only_once_the_new_one_serves() -> None:
    old = groups_of(SPEC_16)
    new = groups_of(SPEC_16, generation={"maxBatchSize": 4})
    old_pods = [observed(p) for p in old[0]]
    step1 = plan_replicas(new, old_pods, max_surge=1)
    assert creates(step1) == names(new[0]) and deletes(step1) == []
    loading = old_pods + [observed(p, ready=False) for p in new[0]]
    assert plan_replicas(new, loading, max_surge=1) == []
    serving = old_pods + [observed(p) for p in new[0]]
    assert deletes(plan_replicas(new, serving, max_surge=1)) == [names(old[0])[0]]  # the leader drains first
    workers_left = old_pods[1:] + [observed(p) for p in new[0]]
    assert deletes(plan_replicas(new, workers_left, max_surge=1)) == names(old[0])[1:]


# --- status ---------------------------------------------------------------------------------------------


def status_of(want: list[list[dict[str, Any]]], pods: list[dict[str, Any]], replicas: int) -> dict[str, Any]:
    hash_ = want[0][0]["metadata"]["labels"][LABEL_TEMPLATE_HASH]
    return compute_status(
        replicas=replicas,
        observed=pods,
        current_hash=hash_,
        endpoint="e",
        generation=1,
        now="t",
        nodes=len(want[0]),
    )


def running(pod: dict[str, Any], ready: bool) -> dict[str, Any]:
    pod = observed(pod, ready=ready)
    pod["spec"]["nodeName"] = "node-a"
    pod["status"]["containerStatuses"] = [{"name": "runtime", "started": ready, "state": {"running": {}}}]
    return pod


def test_a_group_counts_as_one_replica_and_serves_only_when_complete() -> None:
    want = groups_of(SPEC_16, replicas=2)
    all_ready = [running(p, True) for g in want for p in g]
    status = status_of(want, all_ready, 2)
    assert (status["phase"], status["replicas"], status["readyReplicas"]) == ("Ready", 2, 2)
    # A worker still starting sshd: its group does not serve yet, and the status says so.
    pods = [running(want[0][0], False), running(want[0][1], False), *all_ready[2:]]
    status = status_of(want, pods, 2)
    assert (status["phase"], status["readyReplicas"]) == ("Degraded", 1)
    loaded = next(c for c in status["conditions"] if c["type"] == "ModelLoaded")
    assert loaded["status"] == "False"
    # A group missing its worker never counts, even with a ready leader.
    partial = [running(want[0][0], True), *all_ready[2:]]
    assert status_of(want, partial, 2)["readyReplicas"] == 1


def test_a_running_worker_waiting_for_sshd_is_not_loading_a_model() -> None:
    want = groups_of(SPEC_16)
    status = status_of(want, [running(want[0][0], False), running(want[0][1], False)], 1)
    reasons = {c["type"]: c["reason"] for c in status["conditions"]}
    assert reasons["Scheduled"] == "AllScheduled"
    assert reasons["ModelLoaded"] in ("Loading", "StartingSSH", "NotReady")
    status = status_of(want, [running(want[0][0], True), running(want[0][1], False)], 1)
    loaded = next(c for c in status["conditions"] if c["type"] == "ModelLoaded")
    assert loaded["reason"] == "StartingSSH" and names(want[0])[1] in loaded["message"]


# --- reconciler (a recording fake of KubeAPI) -------------------------------------------------------------


def run_pass(api: FakeAPI, spec: dict[str, Any], old_status: dict[str, Any] | None = None) -> Any:
    return reconcile(
        cast(KubeAPI, api),
        Settings(),
        owner=OWNER,
        spec=spec,
        generation=1,
        old_status=old_status,
        logger=LOG,
    )


def test_reconciler_creates_key_secret_services_and_groups_once() -> None:
    api = FakeAPI()
    outcome = run_pass(api, SPEC_16 | {"replicas": 2})
    assert set(api.secrets) == {"big-ssh"}
    assert set(api.services) == {"big", "big-hosts"}
    assert api.services["big"]["spec"]["selector"][LABEL_ROLE] == "leader"
    assert len(api.pods) == 4 and len(creates(outcome.actions)) == 4
    key = api.secrets["big-ssh"]["data"]["ssh-privatekey"]
    api.calls.clear()
    again = run_pass(api, SPEC_16 | {"replicas": 2}, outcome.status)
    assert again.actions == [] and api.calls == []  # nothing twice, and the key pair is kept
    assert api.secrets["big-ssh"]["data"]["ssh-privatekey"] == key


def test_a_group_from_a_new_template_gets_a_new_key_and_old_keys_go_with_their_pods() -> None:
    api = FakeAPI()
    run_pass(api, SPEC_16)
    (first,) = template_hashes(api.secrets["big-ssh"])
    old_key = api.secrets["big-ssh"]["data"][f"{first}.id_ed25519"]
    changed = SPEC_16 | {"generation": {"maxBatchSize": 4}}
    run_pass(api, changed)  # the old group still exists: both templates hold a key
    held = template_hashes(api.secrets["big-ssh"])
    (second,) = held - {first}
    assert first in held and api.secrets["big-ssh"]["data"][f"{second}.id_ed25519"] != old_key
    for name in [n for n, p in api.pods.items() if p["metadata"]["labels"][LABEL_TEMPLATE_HASH] == first]:
        del api.pods[name]  # the old group is gone
    run_pass(api, changed)
    assert template_hashes(api.secrets["big-ssh"]) == {second}
    # A new group mounts its own template's entries only.
    pod = next(iter(api.pods.values()))
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "ssh"]
    assert {item["key"] for item in volume["secret"]["items"]} <= set(api.secrets["big-ssh"]["data"])
    assert all(item["key"].startswith(f"{second}.") for item in volume["secret"]["items"])


def test_reconciler_recreates_a_broken_group_and_reports_the_member() -> None:
    api = FakeAPI()
    first = run_pass(api, SPEC_16)
    leader, worker = sorted(api.pods)
    api.pods[worker]["status"] = {
        "phase": "Failed",
        "reason": "Evicted",
        "message": "The node was low on memory.",
    }
    outcome = run_pass(api, SPEC_16, first.status)
    assert sorted(deletes(outcome.actions)) == [leader, worker]
    failure = outcome.status["lastGroupFailure"]
    assert (failure["group"], failure["pod"], failure["role"], failure["reason"]) == (
        0,
        worker,
        "worker",
        "Evicted",
    )
    assert "low on memory" in failure["message"] and failure["time"]
    (event,) = [e for e in outcome.events if e.reason == "GroupRecreated"]
    assert event.type == "Warning" and worker in event.message
    # The next pass brings the group back whole and keeps the last failure in the status.
    later = run_pass(api, SPEC_16, outcome.status)
    assert sorted(creates(later.actions)) == [leader, worker]
    assert later.status["lastGroupFailure"] == failure


def test_reconciler_switches_the_client_service_to_leaders_and_back() -> None:
    api = FakeAPI()
    single = {"model": "bigscience/bloomz", "cards": 8}
    run_pass(api, single)
    assert LABEL_ROLE not in api.services["big"]["spec"]["selector"]
    api.calls.clear()
    run_pass(api, SPEC_16)
    assert ("delete_service", "big") in api.calls and ("create_service", "big") in api.calls
    assert api.services["big"]["spec"]["selector"][LABEL_ROLE] == "leader"
    run_pass(api, single)
    assert LABEL_ROLE not in api.services["big"]["spec"]["selector"]


def test_a_leader_that_gave_up_on_its_workers_says_why_in_the_status() -> None:
    want = groups_of(SPEC_16)
    leader = running(want[0][0], False)
    message = "launch: 1 of 1 worker(s) not reachable on SSH port 2222 after 600 s: w.h: does not resolve"
    leader["status"]["containerStatuses"] = [
        {
            "name": "runtime",
            "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 75, "reason": "Error", "message": message}},
        }
    ]
    status = status_of(want, [leader, running(want[0][1], True)], 1)
    loaded = next(c for c in status["conditions"] if c["type"] == "ModelLoaded")
    assert loaded["reason"] == "CrashLoopBackOff"
    assert "exit code 75" in loaded["message"] and "does not resolve" in loaded["message"]
