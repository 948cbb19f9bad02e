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


def test_an_https_probe_asks_over_tls_without_verifying(tmp_path):
    """The operator's probe when the runtime serves TLS: httpGet /health with scheme HTTPS."""
    import http.server
    import ssl
    import threading

    from helpers import make_ca_and_server_cert

    get = {"port": "http", "path": "/health", "scheme": "HTTPS"}
    https = {"ports": [{"name": "http", "containerPort": 8000}], "readinessProbe": {"httpGet": get}}
    assert readiness_probe(https) == ReadinessProbe("http", 8000, "/health", "https")

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    _, cert, key = make_ca_and_server_cert(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert check(ReadinessProbe("http", port, "/health", "https"), "127.0.0.1", timeout=5)
        assert not check(ReadinessProbe("http", port, "/other", "https"), "127.0.0.1", timeout=5)
        assert not check(ReadinessProbe("http", port, "/health"), "127.0.0.1", timeout=5)  # plain HTTP
    finally:
        server.shutdown()
        server.server_close()
