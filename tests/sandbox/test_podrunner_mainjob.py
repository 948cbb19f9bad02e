"""The sandbox main job's pure helpers: where the example's model lives on the simulated node."""

from pathlib import Path

import pytest
from bloomz_sandbox.__main__ import load_resources, local_model_dir, parse_args

REPO = Path(__file__).resolve().parents[2]


def test_the_cpu_example_model_maps_under_the_node_root():
    (resource,) = load_resources(REPO / "examples" / "bloomz-cpu.yaml")
    assert resource["metadata"]["name"] == "bloomz-tiny"
    assert local_model_dir(resource, Path("/w/node")) == Path("/w/node/var/lib/bloomz/models/bloomz-tiny")


def test_models_not_on_a_host_path_volume_are_not_built():
    (gaudi,) = load_resources(REPO / "examples" / "bloomz.yaml")  # a Hub id on a PVC
    assert local_model_dir(gaudi, Path("/w/node")) is None
    outside = {
        "spec": {"model": "/elsewhere/m", "storage": {"hostPath": {"path": "/x"}, "mountPath": "/models"}}
    }
    assert local_model_dir(outside, Path("/w/node")) is None
    default_mount = {"spec": {"model": "/models/a/b", "storage": {"hostPath": {"path": "/x"}}}}
    assert local_model_dir(default_mount, Path("/w/node")) == Path("/w/node/x/a/b")


def test_only_bloomz_inference_documents_are_applied_and_waited_for(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"
        "apiVersion: inference.bloomz.dev/v1alpha1\nkind: BloomzInference\nmetadata: {name: b}\nspec: {}\n"
    )
    assert [r["metadata"]["name"] for r in load_resources(manifest)] == ["b"]


def test_defaults_match_the_readme_command():
    args = parse_args([])
    assert not args.once and args.gaudi_cards == 8 and args.workdir == Path(".cache/sandbox")
    assert parse_args(["--once", "--gaudi-cards", "4"]).gaudi_cards == 4


def test_node_capacity_overrides_are_checked_quantities():
    args = parse_args(["--node-capacity", "nvidia.com/gpu=2", "--node-capacity", "memory=64Gi"])
    assert dict(args.node_capacity) == {"nvidia.com/gpu": "2", "memory": "64Gi"}
    for bad in ("cpu", "cpu=", "cpu=lots"):
        with pytest.raises(SystemExit):
            parse_args(["--node-capacity", bad])
