"""Gaudi pods ask for memory and hugepages in proportion to their cards, so small replicas share a server."""

from __future__ import annotations

from typing import Any

import pytest
from bloomz_operator.builders import build_pod_spec
from bloomz_operator.settings import Settings, SettingsError, parse_settings, scale_quantity
from bloomz_operator.spec import parse_spec


def limits(spec: dict[str, Any], settings: Settings | None = None) -> dict[str, str]:
    pod = build_pod_spec(parse_spec(spec), settings or Settings())
    return dict(pod["containers"][0]["resources"]["limits"])


def test_one_card_pod_asks_for_an_eighth_of_a_gaudi_server() -> None:
    assert limits({"model": "bigscience/bloomz-560m", "device": "hpu", "cards": 1}) == {
        "habana.ai/gaudi": "1",
        "memory": "52352Mi",
        "hugepages-2Mi": "11874Mi",  # 5937 pages of 2 MiB
    }


def test_eight_cards_ask_for_intels_whole_server_figures() -> None:
    got = limits({"model": "bigscience/bloomz-7b1", "device": "hpu", "cards": 8})
    assert got == {"habana.ai/gaudi": "8", "memory": "418816Mi", "hugepages-2Mi": "94992Mi"}
    # Intel's example: 409Gi, and 95000Mi of hugepages (47500 pages: a server prepared so holds 8 cards).
    assert 418816 == 409 * 1024 and 94992 <= 95000


def test_multi_node_pods_scale_with_the_cards_of_their_node() -> None:
    got = limits({"model": "bigscience/bloomz", "device": "hpu", "cards": 16, "cardsPerNode": 8})
    assert (got["habana.ai/gaudi"], got["memory"], got["hugepages-2Mi"]) == ("8", "418816Mi", "94992Mi")


def test_a_per_pod_value_in_the_settings_wins_and_null_switches_off() -> None:
    settings = parse_settings({"devices": {"hpu": {"memory": "300Gi", "hugepages2MiPerCard": None}}})
    assert limits({"model": "m", "device": "hpu", "cards": 2}, settings) == {
        "habana.ai/gaudi": "2",
        "memory": "300Gi",
    }
    per_card = parse_settings({"devices": {"hpu": {"memoryPerCard": "64Gi", "hugepages2MiPerCard": 4096}}})
    assert limits({"model": "m", "device": "hpu", "cards": 4}, per_card) == {
        "habana.ai/gaudi": "4",
        "memory": "256Gi",
        "hugepages-2Mi": "16384",
    }


@pytest.mark.parametrize("value", ["1.5Gi", "lots", "-1Gi", "64GiB"])
def test_per_card_values_must_be_whole_quantities(value: str) -> None:
    with pytest.raises(SettingsError, match=r"devices\.hpu\.memoryPerCard"):
        parse_settings({"devices": {"hpu": {"memoryPerCard": value}}})


def test_scale_quantity() -> None:
    assert scale_quantity("11874Mi", 8) == "94992Mi"
    assert scale_quantity("3", 2) == "6"
    assert scale_quantity(None, 8) is None
    with pytest.raises(ValueError):
        scale_quantity("1.5Gi", 2)


def test_cuda_and_cpu_pods_ask_for_no_gaudi_memory() -> None:
    assert limits({"model": "m", "device": "cuda", "cards": 1}) == {"nvidia.com/gpu": "1"}
    assert limits({"model": "m", "device": "cpu", "cards": 2}) == {"memory": "8Gi"}
