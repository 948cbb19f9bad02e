"""The operator's policy on what a spec may ask for: refused specs get InvalidSpec and never a pod."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from bloomz_operator.kubeapi import KubeAPI
from bloomz_operator.policy import PolicySettings, violations
from bloomz_operator.reconciler import reconcile
from bloomz_operator.settings import Settings, SettingsError, parse_settings
from bloomz_operator.spec import parse_spec
from test_operator_multinode import OWNER, FakeAPI

BASE = {"model": "bigscience/bloomz-7b1", "device": "cpu", "cards": 1}
SECRET_ENV = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}


def refused(spec: dict[str, Any], policy: PolicySettings) -> list[str]:
    return violations(parse_spec(BASE | spec), policy)


def test_the_default_policy_refuses_host_paths_and_secret_env_only() -> None:
    default = PolicySettings()
    assert refused({"image": "anything.example/x:1", "tolerations": [{"key": "any"}]}, default) == []
    (host,) = refused({"storage": {"hostPath": {"path": "/data"}}}, default)
    assert "hostPath is not allowed" in host
    (env,) = refused({"env": [SECRET_ENV]}, default)
    assert "spec.env[0] (HF_TOKEN) reads a Secret" in env
    assert refused({"env": [{"name": "A", "value": "1"}]}, default) == []


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/data", True),
        ("/data/models/bloom", True),
        ("/database", False),
        ("/data/../etc", False),
        ("/", False),
    ],
)
def test_host_paths_only_under_allowed_prefixes(path: str, allowed: bool) -> None:
    policy = PolicySettings(host_path_prefixes=("/data/",))
    assert (refused({"storage": {"hostPath": {"path": path}}}, policy) == []) is allowed


def test_images_tolerations_and_secret_env_follow_the_allow_lists() -> None:
    policy = PolicySettings(
        allowed_image_prefixes=("registry.corp/ml/",),
        allowed_toleration_keys=("habana.ai/gaudi",),
        allow_env_secrets=True,
    )
    assert refused({"image": "registry.corp/ml/runtime:1", "env": [SECRET_ENV]}, policy) == []
    (image,) = refused({"image": "docker.io/evil/runtime:1"}, policy)
    assert "docker.io/evil/runtime:1" in image and "registry.corp/ml/" in image
    (toleration,) = refused({"tolerations": [{"key": "habana.ai/gaudi"}, {"operator": "Exists"}]}, policy)
    assert "spec.tolerations[1].key None is not allowed" in toleration


def test_settings_read_the_policy_and_refuse_typos() -> None:
    settings = parse_settings(
        {
            "policy": {
                "hostPathPrefixes": ["/mnt/models"],
                "allowedImagePrefixes": ["ghcr.io/bloomz-operator/"],
                "allowedTolerationKeys": [],
                "allowEnvSecrets": True,
            }
        }
    )
    assert settings.policy == PolicySettings(("/mnt/models",), ("ghcr.io/bloomz-operator/",), (), True)
    assert parse_settings({"policy": {"allowedTolerationKeys": None}}).policy.allowed_toleration_keys is None
    for bad, complaint in (
        ({"hostPathPrefix": ["/x"]}, "unknown key"),
        ({"hostPathPrefixes": ["relative"]}, "absolute"),
        ({"allowEnvSecrets": "yes"}, "allowEnvSecrets"),
        ({"allowedImagePrefixes": "ghcr.io"}, "allowedImagePrefixes"),
    ):
        with pytest.raises(SettingsError, match=complaint):
            parse_settings({"policy": bad})


def test_a_refused_spec_gets_invalid_spec_and_no_pod() -> None:
    api = FakeAPI()
    outcome = reconcile(
        cast(KubeAPI, api),
        Settings(),
        owner=OWNER,
        spec=BASE | {"storage": {"hostPath": {"path": "/etc"}}},
        generation=3,
        old_status=None,
        logger=logging.getLogger("test"),
    )
    assert not api.pods and not api.calls
    assert outcome.status["phase"] == "Failed" and outcome.status["observedGeneration"] == 3
    reasons = {c["reason"] for c in outcome.status["conditions"]}
    assert reasons == {"InvalidSpec"}
    assert "hostPath is not allowed" in outcome.status["conditions"][0]["message"]
