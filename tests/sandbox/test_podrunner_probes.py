"""Readiness probes as the sandbox runs them: parsing (pure) and a real gRPC health check."""

from concurrent import futures

import grpc
import pytest
from bloomz_sandbox.node.probes import ReadinessProbe, check, readiness_probe
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def test_probe_kinds_are_read_from_the_container():
    grpc_probe = {"readinessProbe": {"grpc": {"port": 50051, "service": "bloomz.v1.TextGeneration"}}}
    assert readiness_probe(grpc_probe) == ReadinessProbe("grpc", 50051, "bloomz.v1.TextGeneration")
    named = {
        "ports": [{"name": "metrics", "containerPort": 9090}],
        "readinessProbe": {"tcpSocket": {"port": "metrics"}},
    }
    assert readiness_probe(named) == ReadinessProbe("tcp", 9090)
    http = {"readinessProbe": {"httpGet": {"port": 8080, "path": "/healthz"}}}
    assert readiness_probe(http) == ReadinessProbe("http", 8080, "/healthz")
    assert readiness_probe({}) == ReadinessProbe("none")
    assert readiness_probe({"readinessProbe": {"exec": {"command": ["true"]}}}) == ReadinessProbe("none")
    with pytest.raises(ValueError, match="grpcx"):
        readiness_probe({"readinessProbe": {"tcpSocket": {"port": "grpcx"}}})


def test_grpc_probe_follows_the_health_service():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        probe = ReadinessProbe("grpc", port, "bloomz.v1.TextGeneration")
        servicer.set("bloomz.v1.TextGeneration", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert not check(probe, "127.0.0.1", timeout=5)
        servicer.set("bloomz.v1.TextGeneration", health_pb2.HealthCheckResponse.SERVING)
        assert check(probe, "127.0.0.1", timeout=5)
        assert check(ReadinessProbe("tcp", port), "127.0.0.1", timeout=5)
    finally:
        server.stop(None).wait()
    assert not check(ReadinessProbe("grpc", port), "127.0.0.1", timeout=2)
    assert not check(ReadinessProbe("tcp", port), "127.0.0.1", timeout=2)
