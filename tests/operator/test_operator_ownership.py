"""Objects with our names that this resource does not control are never deleted, replaced or reused."""

from __future__ import annotations

import logging
from typing import Any, cast

from bloomz_operator.builders import Owner, owner_reference
from bloomz_operator.groups import build_replicas
from bloomz_operator.kubeapi import KubeAPI
from bloomz_operator.ownership import CONFLICT_REASON, conflict, controlled_by, owner_tag
from bloomz_operator.reconciler import clean_up, reconcile
from bloomz_operator.settings import Settings
from bloomz_operator.spec import parse_spec
from cluster_fakes import build_pods
from test_operator_multinode import OWNER, SPEC_16, FakeAPI

LOG = logging.getLogger("test")
SINGLE = {"model": "bigscience/bloomz-7b1", "cards": 8}


def planted(name: str, controller: Owner | None = None, kind: str = "Service") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": OWNER.namespace, "uid": f"planted-{name}"}
    if controller is not None:
        meta["ownerReferences"] = [owner_reference(controller)]
    body: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": meta}
    if kind == "Service":
        body["spec"] = {"selector": {"app": "someone-else"}}
    else:
        body["data"] = {"authorized_keys": "c3NoLWVkMjU1MTkgQUFBQSBhdHRhY2tlcg=="}
    return body


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


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_only_the_controller_reference_with_our_uid_counts() -> None:
    ours = planted("big", OWNER)
    assert controlled_by(ours, OWNER.uid) and conflict(ours, OWNER.uid, "Service", "big") is None
    assert conflict(None, OWNER.uid, "Service", "big") is None
    unowned = conflict(planted("big"), OWNER.uid, "Service", "big")
    assert unowned is not None and "Service big already exists" in unowned.message
    other = conflict(planted("big", Owner("other", "ml", "uid-other")), OWNER.uid, "Service", "big")
    assert other is not None and "BloomzInference/other" in other.message
    # Our uid on a reference that is not the controller one does not make it ours.
    shared = planted("big")
    shared["metadata"]["ownerReferences"] = [{**owner_reference(OWNER), "controller": False}]
    assert conflict(shared, OWNER.uid, "Service", "big") is not None


def test_pod_names_are_unique_per_owner_and_dns_labels() -> None:
    prefix = "x" * 40
    first, second = Owner(prefix + "-a", "ml", "uid-1"), Owner(prefix + "-b", "ml", "uid-2")
    spec = parse_spec(SINGLE | {"replicas": 2})
    names = [{p["metadata"]["name"] for p in build_pods(o, spec, Settings())} for o in (first, second)]
    assert not names[0] & names[1]
    assert owner_tag("uid-1") != owner_tag("uid-2")
    longest = Owner("n" * 253, "ml", "uid-3")
    group_spec = parse_spec(SPEC_16 | {"replicas": 1000})
    last = build_replicas(longest, group_spec, Settings())[-1][-1]
    assert len(last["metadata"]["name"]) <= 63 and last["spec"]["hostname"] == last["metadata"]["name"]


def test_a_planted_service_is_left_alone_and_reported() -> None:
    api = FakeAPI()
    api.services["big"] = planted("big")
    outcome = run_pass(api, SINGLE)
    assert api.services["big"] == planted("big")  # not deleted, not replaced
    assert not api.pods and not [c for c in api.calls if c[0].endswith("_service")]
    assert outcome.status["phase"] == "Failed"
    ready = ready_condition(outcome.status)
    assert (ready["status"], ready["reason"]) == ("False", CONFLICT_REASON)
    assert "Service big" in ready["message"]
    (event,) = [e for e in outcome.events if e.reason == CONFLICT_REASON]
    assert event.type == "Warning" and "Service big" in event.message
    # The next pass says nothing new (one event per conflict), and once the Service is gone all is built.
    again = run_pass(api, SINGLE, outcome.status)
    assert not [e for e in again.events if e.reason == CONFLICT_REASON]
    assert ready_condition(again.status)["lastTransitionTime"] == ready["lastTransitionTime"]
    del api.services["big"]
    fixed = run_pass(api, SINGLE, again.status)
    assert len(api.pods) == 1 and controlled_by(api.services["big"], OWNER.uid)
    assert ready_condition(fixed.status)["reason"] != CONFLICT_REASON


def test_a_planted_ssh_secret_is_never_reused() -> None:
    api = FakeAPI()
    api.secrets["big-ssh"] = planted("big-ssh", kind="Secret")
    outcome = run_pass(api, SPEC_16)
    assert api.secrets["big-ssh"] == planted("big-ssh", kind="Secret")
    assert not api.pods  # no worker ever mounts the planted authorized_keys
    assert ("create_secret", "big-ssh") not in api.calls
    assert "Secret big-ssh" in ready_condition(outcome.status)["message"]


def test_clean_up_deletes_only_our_services() -> None:
    api = FakeAPI()
    api.services["big"] = planted("big", Owner("other", "ml", "uid-other"))
    run_pass(api, SPEC_16)  # creates big-hosts (ours); big is someone else's
    clean_up(cast(KubeAPI, api), OWNER, LOG)
    assert set(api.services) == {"big"}
    assert ("delete_service", "big") not in api.calls
