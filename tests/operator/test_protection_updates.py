"""The resource's NetworkPolicy and PodDisruptionBudget follow the operator's settings: a pass replaces our
own copies when the settings they are built from changed (keeping other metadata and the resourceVersion),
leaves current ones alone, and never touches objects of those names that the resource does not control."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from typing import Any, cast

import pytest
from bloomz_operator.builders import Owner, owner_reference
from bloomz_operator.kubeapi import KubeAPI
from bloomz_operator.ownership import CONFLICT_REASON
from bloomz_operator.policy import NetworkSettings
from bloomz_operator.protection import build_disruption_budget, build_network_policy, protection_patch
from bloomz_operator.reconciler import reconcile
from bloomz_operator.settings import Settings
from kubernetes.client.rest import ApiException
from test_operator_multinode import OWNER, FakeAPI

LOG = logging.getLogger("test")
SPEC = {"model": "bigscience/bloomz-7b1", "cards": 8}


def run_pass(api: FakeAPI, settings: Settings) -> Any:
    return reconcile(
        cast(KubeAPI, api), settings, owner=OWNER, spec=SPEC, generation=1, old_status=None, logger=LOG
    )


def replaces(api: FakeAPI) -> list[tuple[str, str]]:
    return [c for c in api.calls if c[0].startswith("patch_") and c[0] != "patch_secret"]


def client_namespaces(api: FakeAPI) -> set[str]:
    clients = api.others["NetworkPolicy", OWNER.name]["spec"]["ingress"][0]["from"]
    return {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in clients}


def test_a_settings_change_replaces_our_network_policy_in_place() -> None:
    api = FakeAPI()
    run_pass(api, Settings())
    assert client_namespaces(api) == {OWNER.namespace}
    run_pass(api, Settings())
    assert replaces(api) == []  # current: no write
    api.others["NetworkPolicy", OWNER.name]["metadata"].update(
        resourceVersion="41", annotations={"team": "keep"}, labels={"extra": "keep"}
    )
    wider = replace(Settings(), network=NetworkSettings(client_namespaces=("gateway",)))
    run_pass(api, wider)
    assert replaces(api) == [("patch_NetworkPolicy", OWNER.name)]
    policy = api.others["NetworkPolicy", OWNER.name]
    assert client_namespaces(api) == {OWNER.namespace, "gateway"}
    assert policy["metadata"]["annotations"] == {"team": "keep"}
    assert policy["metadata"]["labels"]["extra"] == "keep"
    assert policy["metadata"]["ownerReferences"] == [owner_reference(OWNER)]
    # Clearing a setting removes what it added (the whole spec is set, not merged).
    labelled = replace(Settings(), network=NetworkSettings(client_pod_labels={"role": "gateway"}))
    run_pass(api, labelled)
    assert "podSelector" in api.others["NetworkPolicy", OWNER.name]["spec"]["ingress"][0]["from"][0]
    run_pass(api, Settings())
    assert "podSelector" not in api.others["NetworkPolicy", OWNER.name]["spec"]["ingress"][0]["from"][0]
    default = build_network_policy(OWNER, NetworkSettings())
    assert api.others["NetworkPolicy", OWNER.name]["spec"] == default["spec"]


def test_a_changed_disruption_budget_of_ours_is_put_back() -> None:
    api = FakeAPI()
    run_pass(api, Settings())
    api.others["PodDisruptionBudget", OWNER.name]["spec"]["maxUnavailable"] = 0  # an older build's, or edited
    run_pass(api, Settings())
    assert replaces(api) == [("patch_PodDisruptionBudget", OWNER.name)]
    assert api.others["PodDisruptionBudget", OWNER.name]["spec"] == build_disruption_budget(OWNER)["spec"]


def test_objects_of_those_names_we_do_not_control_are_never_replaced() -> None:
    api = FakeAPI()
    stranger = Owner(name="other", namespace=OWNER.namespace, uid="uid-other")
    theirs = build_network_policy(stranger, NetworkSettings())
    theirs["metadata"]["name"] = OWNER.name
    budget = {**build_disruption_budget(stranger), "spec": {"maxUnavailable": 0}}
    budget["metadata"] = {**budget["metadata"], "name": OWNER.name}
    api.others["NetworkPolicy", OWNER.name] = copy.deepcopy(theirs)
    api.others["PodDisruptionBudget", OWNER.name] = copy.deepcopy(budget)
    outcome = run_pass(api, replace(Settings(), network=NetworkSettings(client_namespaces=("gateway",))))
    assert replaces(api) == [] and not api.pods
    assert api.others["NetworkPolicy", OWNER.name] == theirs
    assert api.others["PodDisruptionBudget", OWNER.name] == budget
    ready = {c["type"]: c for c in outcome.status["conditions"]}["Ready"]
    assert ready["reason"] == CONFLICT_REASON
    assert f"NetworkPolicy {OWNER.name}" in ready["message"]
    assert f"PodDisruptionBudget {OWNER.name}" in ready["message"]


def test_a_patch_computed_from_a_stale_read_is_refused() -> None:
    api = FakeAPI()
    run_pass(api, Settings())
    budget = api.others["PodDisruptionBudget", OWNER.name]
    budget["metadata"]["resourceVersion"] = "7"
    stale = copy.deepcopy(budget)
    stale["spec"]["maxUnavailable"] = 0
    patch = protection_patch(stale, build_disruption_budget(OWNER))
    assert patch is not None and patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}
    budget["metadata"]["resourceVersion"] = "8"  # someone wrote in between
    with pytest.raises(ApiException):
        api.patch_disruption_budget(OWNER.namespace, OWNER.name, patch)


def test_protection_patch_ignores_what_the_server_adds_to_metadata() -> None:
    desired = build_disruption_budget(OWNER)
    existing = copy.deepcopy(desired)
    existing["metadata"].update(uid="u", resourceVersion="7", generation=2, creationTimestamp="t")
    existing["status"] = {"currentHealthy": 1}
    assert protection_patch(existing, desired) is None
    existing["spec"]["maxUnavailable"] = 2
    assert protection_patch(existing, desired) == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "add", "path": "/spec", "value": desired["spec"]},
        {"op": "add", "path": "/metadata/labels", "value": desired["metadata"]["labels"]},
    ]
