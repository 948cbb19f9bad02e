"""In-cluster credentials: the token folder (standard path or overridden), the HTTPS server address."""

from __future__ import annotations

from pathlib import Path

import kubernetes
import pytest
from bloomz_operator import incluster
from bloomz_operator.kubeapi import make_api_client


def _service_account(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "token").write_text("sandbox-sa-token")  # the kubelet writes no newline
    (folder / "namespace").write_text("bloomz-system")
    (folder / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return folder


def test_in_cluster_client_reads_the_overridden_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.setenv(incluster.DIR_ENV, str(_service_account(tmp_path / "sa")))
    assert incluster.in_cluster()
    assert incluster.server_url() == "https://127.0.0.1:6443"
    assert incluster.read_file("namespace") == "bloomz-system"
    configuration = make_api_client().configuration
    assert configuration.host == "https://127.0.0.1:6443"
    assert configuration.auth_settings()["BearerToken"]["value"].lower() == "bearer sandbox-sa-token"
    assert configuration.ssl_ca_cert == str(tmp_path / "sa" / "ca.crt")


def test_kubeconfig_wins_and_the_standard_folder_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.delenv(incluster.DIR_ENV, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    assert incluster.server_url() == "https://[fd00::1]:443"
    assert incluster.service_account_dir() == Path("/var/run/secrets/kubernetes.io/serviceaccount")
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")
    assert not incluster.in_cluster()
    with pytest.raises(kubernetes.config.ConfigException):
        make_api_client()
