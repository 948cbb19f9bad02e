"""The Kubernetes objects the builders send, whole: both Services, the pods' fixed environment, names."""

from __future__ import annotations

from typing import Any

from bloomz_operator.builders import Owner, build_service, pod_name, template_hash
from bloomz_operator.groups import build_headless_service, headless_service_name, member_name
from bloomz_operator.settings import DeviceSettings, Settings
from bloomz_operator.spec import parse_spec
from cluster_fakes import build_pods

OWNER = Owner(name="big", namespace="ml", uid="uid-big")
LABELS = {
    "app.kubernetes.io/name": "bloomz-runtime",
    "inference.bloomz.dev/name": "big",
    "app.kubernetes.io/instance": "big",
    "app.kubernetes.io/managed-by": "bloomz-operator",
}
META = {
    "namespace": "ml",
    "labels": LABELS,
    "ownerReferences": [
        {
            "apiVersion": "inference.bloomz.dev/v1alpha1",
            "kind": "BloomzInference",
            "name": "big",
            "uid": "uid-big",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ],
}
SELECTOR = {"app.kubernetes.io/name": "bloomz-runtime", "inference.bloomz.dev/name": "big"}
PORTS = [
    {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
    {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
    {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
]


def test_the_client_service_whole() -> None:
    assert build_service(OWNER) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "big", **META},
        "spec": {"type": "ClusterIP", "selector": SELECTOR, "ports": PORTS},
    }
    leaders = build_service(OWNER, leaders_only=True)
    assert leaders["spec"]["selector"] == {**SELECTOR, "inference.bloomz.dev/role": "leader"}


def test_the_headless_service_whole() -> None:
    assert build_headless_service(OWNER) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "big-hosts", **META},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # workers are resolvable before they are ready
            "selector": SELECTOR,
            "ports": [{"name": "ssh", "port": 2222, "targetPort": 2222, "protocol": "TCP"}],
        },
    }


def env_of(spec: dict[str, Any], settings: Settings | None = None) -> list[dict[str, Any]]:
    (pod,) = build_pods(OWNER, parse_spec(spec), settings or Settings())
    (container,) = pod["spec"]["containers"]
    return list(container["env"])


def test_the_pod_environment() -> None:
    env = env_of({"model": "bigscience/bloomz-7b1", "cards": 8, "storage": {"mountPath": "/weights/"}})
    assert env[:3] == [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    values = {e["name"]: e.get("value") for e in env}
    assert values["HF_HOME"] == "/weights/huggingface"
    settings = Settings(
        devices={**Settings().devices, "cpu": DeviceSettings(image="i", env={"A": "1", "B": "2"})}
    )
    cpu = env_of({"model": "m", "device": "cpu", "env": [{"name": "B", "value": "spec"}]}, settings)
    assert {e["name"]: e.get("value") for e in cpu if e["name"] in ("A", "B")} == {"A": "1", "B": "spec"}
    assert "HF_HOME" not in {e["name"] for e in cpu}  # no model volume: the image's default


def test_names_fit_kubernetes_limits() -> None:
    long = "x" * 70
    # 33 characters of the name, a 5-character digest of the uid, the template hash, the index.
    assert pod_name(Owner(long, "ml", "u"), "0123456789", 3) == "x" * 33 + "-0bfe9-0123456789-3"
    assert pod_name(Owner("ends-" + "y" * 27 + "-", "ml", "u"), "h", 0) == "ends-" + "y" * 27 + "-0bfe9-h-0"
    assert pod_name(OWNER, "h", 0) == "big-445c9-h-0"
    member = member_name(Owner(long, "ml", "u"), "0123456789", 9999, 99)
    assert member == "x" * 33 + "-0bfe9-0123456789-9999-99" and len(member) <= 63  # a DNS label
    assert headless_service_name(long) == "x" * 56 + "-hosts"
    assert len(headless_service_name(long)) <= 63
    assert template_hash({"a": 1}) == template_hash({"a": 1}) != template_hash({"a": 2})
    assert len(template_hash({})) == 10


def test_every_built_object_matches_the_kubernetes_schemas() -> None:
    """Strict: a misspelt or unknown key anywhere in a pod, Service or Secret is refused."""
    import kubernetes_validate
    from bloomz_operator.groups import build_replicas
    from bloomz_operator.sshkeys import build_ssh_secret, generate_key_pair

    objects: list[dict[str, Any]] = [build_service(OWNER), build_service(OWNER, leaders_only=True)]
    objects.append(build_headless_service(OWNER))
    for device in ("hpu", "cuda", "cpu"):
        spec = {
            "model": "m",
            "device": device,
            "cards": 2,
            "storage": {"pvc": {"claimName": "c", "readOnly": True}},
        }
        objects += build_pods(OWNER, parse_spec(spec), Settings())
    objects += [
        p for g in build_replicas(OWNER, parse_spec({"model": "m", "cards": 16}), Settings()) for p in g
    ]
    objects.append(build_ssh_secret(OWNER, generate_key_pair("test"), "0123456789"))
    for obj in objects:
        kubernetes_validate.validate(obj, "1.31.0", strict=True)


def test_the_template_hash_is_stable_and_order_free() -> None:
    # Pinned: a different digest after an operator upgrade would replace every running pod.
    assert template_hash({"b": [1, {"c": "d"}], "a": 1}) == template_hash({"a": 1, "b": [1, {"c": "d"}]})
    assert template_hash({"a": 1, "b": 2}) == "43258cff78"
    assert headless_service_name("h" * 55 + "-x") == "h" * 55 + "-hosts"
    assert headless_service_name("-lead") == "-lead-hosts"


def test_a_read_only_claim_is_mounted_read_only() -> None:
    spec = {"model": "m", "storage": {"pvc": {"claimName": "c", "subPath": "s", "readOnly": True}}}
    (pod,) = build_pods(OWNER, parse_spec(spec), Settings())
    volume = next(v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"] == {"claimName": "c", "readOnly": True}
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"name": volume["name"], "mountPath": "/models", "readOnly": True, "subPath": "s"}


def test_the_model_size_comes_from_the_last_path_part() -> None:
    from bloomz_operator.builders import model_size_billions

    assert model_size_billions("/models/team3b/bloom-560m") == 0.56
    assert model_size_billions("team7b1/bloomz") == 176.0


def test_ports_probes_and_flags_of_a_group() -> None:
    from bloomz_operator.builders import build_pod_spec
    from bloomz_operator.constants import LABEL_TEMPLATE_HASH
    from bloomz_operator.groups import build_replicas, current_template_hash

    spec = parse_spec({"model": "m", "cards": 16})
    leader, worker = build_replicas(OWNER, spec, Settings())[0]
    for pod in (leader, worker):
        (container,) = pod["spec"]["containers"]
        assert {port["protocol"] for port in container["ports"]} == {"TCP"}
    (worker_container,) = worker["spec"]["containers"]
    assert worker_container["readinessProbe"] == {
        "tcpSocket": {"port": 2222},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    args = leader["spec"]["containers"][0]["args"]
    assert args[args.index("--workers-timeout-s") + 1] == "600"
    assert leader["metadata"]["labels"][LABEL_TEMPLATE_HASH] == current_template_hash(spec, Settings())
    assert current_template_hash(spec, Settings()) != template_hash(build_pod_spec(spec, Settings()))


def test_paths_keep_their_own_letters() -> None:
    from bloomz_operator.builders import model_size_billions

    assert model_size_billions("org/BLOOMX") is None  # not the 176B "bloom"
    env = env_of({"model": "m", "cards": 8, "storage": {"mountPath": "/DATAX/"}})
    assert {e["name"]: e.get("value") for e in env}["HF_HOME"] == "/DATAX/huggingface"


def test_the_pod_security_context_whole() -> None:
    def pod_security(uid: int | None) -> dict[str, Any]:
        settings = Settings(devices={**Settings().devices, "cpu": DeviceSettings(image="i", run_as_user=uid)})
        (pod,) = build_pods(OWNER, parse_spec({"model": "m", "device": "cpu"}), settings)
        return dict(pod["spec"]["securityContext"])

    seccomp = {"seccompProfile": {"type": "RuntimeDefault"}}
    assert pod_security(None) == seccomp  # the image's own user
    ids = {"runAsUser": 1, "runAsGroup": 1, "fsGroup": 1}
    assert pod_security(1) == {**seccomp, "runAsNonRoot": True, **ids}
    assert pod_security(0) == {
        **seccomp,
        "runAsNonRoot": False,
        "runAsUser": 0,
        "runAsGroup": 0,
        "fsGroup": 0,
    }
