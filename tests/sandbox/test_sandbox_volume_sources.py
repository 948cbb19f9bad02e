"""Secret and ConfigMap volumes as the sandbox pod runner projects them (pure parts and the file writer)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from bloomz_sandbox.node.volume_sources import (
    MountFailure,
    ProjectedFile,
    VolumeSource,
    missing_object_message,
    object_data,
    projected_files,
    volume_sources,
    write_files,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


SSH_VOLUME = {
    "name": "ssh",
    "secret": {
        "secretName": "big-ssh",
        "defaultMode": 0o400,
        "items": [{"key": "id_ed25519", "path": "id_ed25519"}, {"key": "authorized_keys", "path": "ak"}],
    },
}


def test_secret_and_configmap_volumes_are_found_and_others_ignored() -> None:
    pod = {
        "spec": {
            "volumes": [
                SSH_VOLUME,
                {"name": "cfg", "configMap": {"name": "settings"}},
                {"name": "models", "hostPath": {"path": "/m"}},
            ]
        }
    }
    found = volume_sources(pod)
    assert [(v.volume, v.kind, v.object_name) for v in found] == [
        ("ssh", "secret", "big-ssh"),
        ("cfg", "configmap", "settings"),
    ]


def test_secret_data_is_base64_and_configmaps_are_plain() -> None:
    secret = {"data": {"a": b64("x")}, "stringData": {"b": "y"}}
    assert object_data("secret", secret) == {"a": b"x", "b": b"y"}
    config_map = {"data": {"a": "x"}, "binaryData": {"b": b64("\x00")}}
    assert object_data("configmap", config_map) == {"a": b"x", "b": b"\x00"}


def test_listed_items_get_their_paths_and_the_default_mode() -> None:
    (source,) = volume_sources({"spec": {"volumes": [SSH_VOLUME]}})
    data = {"id_ed25519": b"private", "authorized_keys": b"public", "id_ed25519.pub": b"pub"}
    assert projected_files(source, data) == [
        ProjectedFile("ak", b"public", 0o400),
        ProjectedFile("id_ed25519", b"private", 0o400),
    ]


def test_without_items_every_key_is_a_file_with_mode_0644_unless_told() -> None:
    source = VolumeSource("cfg", "configmap", "settings", {"name": "settings"})
    assert projected_files(source, {"b": b"2", "a": b"1"}) == [
        ProjectedFile("a", b"1", 0o644),
        ProjectedFile("b", b"2", 0o644),
    ]
    item_mode = VolumeSource("s", "secret", "s", {"items": [{"key": "k", "path": "d/k", "mode": 0o600}]})
    assert projected_files(item_mode, {"k": b"v"}) == [ProjectedFile("d/k", b"v", 0o600)]


def test_a_missing_listed_key_is_a_mount_failure_unless_optional() -> None:
    (source,) = volume_sources({"spec": {"volumes": [SSH_VOLUME]}})
    with pytest.raises(MountFailure, match='volume "ssh" : secret "big-ssh" has no key "authorized_keys"'):
        projected_files(source, {"id_ed25519": b"k"})
    optional = VolumeSource("o", "secret", "s", {"optional": True, "items": [{"key": "k", "path": "k"}]})
    assert projected_files(optional, {}) == []


def test_paths_may_not_escape_the_volume() -> None:
    source = VolumeSource("s", "secret", "s", {"items": [{"key": "k", "path": "../k"}]})
    with pytest.raises(ValueError, match=r"\.\."):
        projected_files(source, {"k": b"v"})


def test_the_missing_object_message_is_the_kubelets() -> None:
    (source,) = volume_sources({"spec": {"volumes": [SSH_VOLUME]}})
    assert (
        missing_object_message(source)
        == 'MountVolume.SetUp failed for volume "ssh" : secret "big-ssh" not found'
    )


def test_files_are_written_with_their_modes_and_can_be_written_again(tmp_path: Path) -> None:
    directory = tmp_path / "volumes" / "ssh"
    write_files(directory, [ProjectedFile("id_ed25519", b"one", 0o400), ProjectedFile("old", b"x", 0o644)])
    key = directory / "id_ed25519"
    assert key.read_bytes() == b"one" and key.stat().st_mode & 0o777 == 0o400
    write_files(directory, [ProjectedFile("id_ed25519", b"two", 0o400)])  # a restart: read-only file exists
    assert key.read_bytes() == b"two" and key.stat().st_mode & 0o777 == 0o400
    assert sorted(p.name for p in directory.iterdir()) == ["id_ed25519"]


def test_a_projected_volume_merges_its_secrets_into_one_directory() -> None:
    """The operator's API-key volume: the users' Secret (every key) and one item of its own Secret."""
    keys = {
        "name": "api-keys",
        "projected": {
            "sources": [
                {"secret": {"name": "team-keys"}},
                {
                    "secret": {
                        "name": "x-api-key",
                        "items": [{"key": "bloomz-operator", "path": "bloomz-operator"}],
                    }
                },
            ]
        },
    }
    users, own = volume_sources({"spec": {"volumes": [keys, SSH_VOLUME]}})[:2]
    assert [(s.volume, s.kind, s.object_name) for s in (users, own)] == [
        ("api-keys", "secret", "team-keys"),
        ("api-keys", "secret", "x-api-key"),
    ]
    files = projected_files(users, {"a": b"1", "b": b"2"}) + projected_files(own, {"bloomz-operator": b"3"})
    assert [(f.path, f.content, f.mode) for f in files] == [
        ("a", b"1", 0o644), ("b", b"2", 0o644), ("bloomz-operator", b"3", 0o644),
    ]  # fmt: skip
    moded = {**keys, "projected": {**keys["projected"], "defaultMode": 0o440}}
    assert all(s.source["defaultMode"] == 0o440 for s in volume_sources({"spec": {"volumes": [moded]}}))
