"""Pod IP allocation: distinct loopback addresses, reserved across runners, busy ones skipped."""

import socket

from bloomz_sandbox.node.addresses import LoopbackAddresses, port_listening, ports_free


def test_addresses_are_distinct_and_reserved_across_allocators(tmp_path):
    first = LoopbackAddresses(first="127.0.3.2", count=3, lock_dir=tmp_path)
    second = LoopbackAddresses(first="127.0.3.2", count=3, lock_dir=tmp_path)  # another sandbox
    a = first.allocate([])
    b = second.allocate([])
    c = first.allocate([])
    assert len({a, b, c}) == 3
    first.release(a)
    assert second.allocate([]) == a  # freed machine-wide once released
    assert first.in_use == {c}


def test_an_address_with_a_listener_on_a_pod_port_is_skipped(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.3.20", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not ports_free("127.0.3.20", [port]) and port_listening("127.0.3.20", port)
        addresses = LoopbackAddresses(first="127.0.3.20", count=2, lock_dir=tmp_path)
        assert addresses.allocate([port]) == "127.0.3.21"
    assert ports_free("127.0.3.20", [port])
