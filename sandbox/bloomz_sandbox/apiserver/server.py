"""A Kubernetes API emulator for the local sandbox and the integration tests (a development tool).

It is a real HTTP API server on 127.0.0.1 that the real Kopf operator (``--standalone``), the real
``kubernetes`` Python client and real ``kubectl`` (``apply [--server-side]``, ``get [-w] [-o yaml]``,
``describe``, ``explain``, ``patch``, ``label``, ``wait``, ``logs``, ``delete``) work against. It keeps
everything in memory.

Usage::

    with SandboxAPIServer(crd_paths=[Path("crds/bloomzinferences.inference.bloomz.dev.yaml")]) as api:
        api.write_kubeconfig(tmp_path / "kubeconfig")       # for kubectl, Kopf, subprocesses
        core = kubernetes.client.CoreV1Api(api.api_client())  # no $KUBECONFIG involved
        ...

    class SandboxAPIServer:
        def __init__(self, *, host="127.0.0.1", port=0, crd_paths=(), namespaces=("default",), tls_dir=None)
        tls_port, ca_path                     # with tls_dir: the same API over HTTPS (in-cluster clients)
        # audit_path=None: the audit log also as JSON lines in that file
        def start(self) -> SandboxAPIServer   # serves in a background thread with its own event loop and
                                              # returns once listening (from sync code, from pytest, next
                                              # to kopf.testing.KopfRunner)
        def stop(self) -> None                # idempotent; ends open watches and frees the port
        __enter__ / __exit__                  # start / stop
        url: str                              # "http://127.0.0.1:PORT" (valid once started)
        def write_kubeconfig(self, path, namespace="default") -> Path
        def api_client(self) -> kubernetes.client.ApiClient
        # extras: port: int; bookmark_interval_s=10.0 (idle BOOKMARK period of watches that allow them);
        # record_requests=False -> requests: list[RequestRecord(method, path, query, user_agent)]
        audit_log: list[AuditRecord]          # who did what, with which code (see below)
        def issue_token(self, namespace, service_account) -> str
        def serve_pod_logs(self, provider)    # provider(namespace, pod, container) -> Path | None
                                              # serves pods/log from that file: kubectl logs [-f] [--tail N]
        faults: Faults                        # inject errors and stalls: faults.fail(500, ...), .stall(...)

    python -m bloomz_sandbox.apiserver [--host H] [--port N] [--crd FILE ...] [--namespace NS ...]
                                                [--kubeconfig OUT]     # serves until Ctrl-C / SIGTERM

What it emulates (like a real API server):
- discovery: ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>``, ``/apis/<group>/<version>`` (with the
  CRDs' resources, short names, categories, verbs, subresources), ``/version``, ``/healthz``, and a
  minimal ``/openapi/v3`` (see ``openapi``): every PATCH takes ``fieldValidation``, so
  kubectl's default ``--validate=strict`` leaves validation to the server (which accepts and ignores it,
  see below), and the CRDs' schemas for ``kubectl explain``. No ``/openapi/v2`` (404).
- built-in resources: namespaces, nodes, pods, services, endpoints, events (core/v1 and events.k8s.io/v1),
  configmaps, secrets, serviceaccounts, persistentvolumeclaims, persistentvolumes, leases,
  customresourcedefinitions, and (stored only; controllers live in the sandbox) apps/v1 deployments and
  replicasets, rbac.authorization.k8s.io/v1 roles, clusterroles, rolebindings, clusterrolebindings,
  networkpolicies and validating admission policies (+ bindings) - enough for ``helm install`` of the
  operator's chart (``helm uninstall``'s protobuf DeleteOptions are understood);
  a CRD (preloaded from ``crd_paths`` or POSTed) registers its served
  versions, and deleting it removes them and their objects.
- metadata: namespace, uid, global monotonic resourceVersion, creationTimestamp, generation (1 on create,
  +1 only when something outside metadata/status changes), ``generateName``; lists carry ``kind``
  (``PodList``) and ``metadata.resourceVersion``; no-op writes change nothing.
- verbs: create, get, list (label selectors: equality and set-based; field selectors: ``=``/``!=`` on any
  dotted path such as ``metadata.name``, ``status.phase``, ``spec.nodeName``), replace (PUT), patch
  (merge, JSON, strategic merge for built-in kinds, simplified server-side apply: create-or-merge without
  field managers), delete (``propagationPolicy``, ``preconditions``), deletecollection, ``dryRun``.
- errors: Status bodies with reason NotFound (404), AlreadyExists (409), Conflict (409, a stale
  resourceVersion in PUT/PATCH or a failed precondition), Invalid (422: names, label keys and values and
  annotation keys against Kubernetes' rules - Service names are DNS-1035 labels -, new finalizers on an
  object being deleted, failed JSON-patch tests), BadRequest (400), UnsupportedMediaType (415),
  RequestEntityTooLarge (413, bodies over 3 MiB), Expired (410).
- status subresource (CRDs that declare it; pods, services, nodes, namespaces, PVCs): writes to
  ``.../status`` change only ``status``; writes to the object keep the stored ``status``. Pod status is
  reset to ``{"phase": "Pending"}`` on create, so the pod runner must write pod status via ``pods/status``.
- scale subresource (CRDs that declare it, see ``scale``): GET, PUT and merge / JSON patches of an
  ``autoscaling/v1`` Scale mapped through the CRD's replica and selector paths (``kubectl scale``, HPA).
- deletion: finalizers set ``deletionTimestamp`` (``deletionGracePeriodSeconds`` 0, as for real custom
  resources) and keep the object until the last finalizer is patched away (adding finalizers then is
  refused). Pods are deleted gracefully like on a real server: a pod bound to a node (``spec.nodeName``)
  and not Succeeded/Failed stays, terminating, with ``deletionGracePeriodSeconds`` (the request's, else
  ``spec.terminationGracePeriodSeconds``, else 30) until it is deleted again with grace period 0 - the
  kubelet's part, played by the pod runner; unbound pods go at once. ownerReference garbage collection
  deletes the dependents of a deleted owner (Background: at once; Foreground: the owner stays, marked with
  the ``foregroundDeletion`` finalizer, until its dependents are gone; Orphan strips the reference);
  deleting a namespace deletes its content, and the namespace goes when it is empty.
- watch (``?watch=true``) streams JSON lines (``application/json``): ADDED/MODIFIED/DELETED for every
  change, including status and finalizer changes; cluster-wide and namespaced; ``resourceVersion``
  resumes from a bounded history (older is an ERROR event with code 410, as real servers do),
  ``timeoutSeconds``, ``allowWatchBookmarks`` (a BOOKMARK every ``bookmark_interval_s`` when idle),
  label/field selectors (an object leaving a selector is a DELETED).
- ``pods/log`` (``kubectl logs [-f] [--tail N] [-c C]``) once a provider of log files is set (the pod
  runner keeps one file per container); ``-f`` follows the file until the pod is gone.
- authentication and RBAC (``access``, ``rbac``): tokens the server issued for service accounts
  (TokenRequest: ``POST .../serviceaccounts/<name>/token``, ``kubectl create token``; ``issue_token()``)
  are checked against Roles, ClusterRoles and their bindings (403 Forbidden Status otherwise, 401 for an
  unknown token of that form); any other token is the unrestricted administrator (the kubeconfig's);
  ``audit_log``: (user, verb, group, resource, subresource, namespace, name, code) of every request.
- kubectl tables: with ``Accept: ...;as=Table;g=meta.k8s.io;v=v1`` lists, gets and watches return
  ``meta.k8s.io/v1`` Tables from the CRD's ``additionalPrinterColumns`` (date columns as ages like
  "5m"), NAME READY STATUS RESTARTS AGE for pods, familiar columns for services, nodes, namespaces, events.

What it does not do: no CRD schema validation, pruning or defaulting, whatever ``fieldValidation`` says
(the schema is covered by unit tests with ``jsonschema``), no admission, no controllers, scheduler or
kubelets (the pod runner plays those), no
``limit``/``continue`` paging (whole lists are returned), no field managers in server-side apply;
protobuf request bodies only for what kubectl's imperative commands send (``create namespace``,
``configmap``, ``secret``, ``service``, ``serviceaccount``; others get 415 - use ``kubectl apply -f``);
responses are always JSON.

Kopf: the ``kubernetes`` library reads ``$KUBECONFIG`` when it is imported, so point an in-process Kopf
at the server explicitly - a ``@kopf.on.login()`` handler returning ``kopf.ConnectionInfo(server=api.url,
token="sandbox")`` - or give an operator subprocess ``KUBECONFIG=<write_kubeconfig(...)>``.

Why not kmock's ``KubernetesEmulator``: it lacks nearly every semantic above (see TESTING.md), keeps
objects as merge-only version histories, and ``kmock.Server`` patches aiohttp's DNS resolver class-wide
(shared with the Kopf client in the same process, and refusing to stop out of order). So this server uses
aiohttp - kmock's own HTTP engine - directly, with its own store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

from . import tls
from .access import AuditRecord
from .faults import Faults
from .resources import CRD_RESOURCE
from .routes import ApiHttpHandler, RequestRecord
from .store import ObjectStore

if TYPE_CHECKING:
    import kubernetes.client

log = logging.getLogger(__name__)

CONTEXT_NAME = "bloomz-sandbox"
SANDBOX_TOKEN = "bloomz-sandbox"  # accepted and ignored; clients like Kopf want some credentials
MAX_BODY_BYTES = 3 * 1024 * 1024  # a real API server's request size limit (etcd's object limit is ~1.5 MB)


def load_crds(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The CustomResourceDefinition documents of YAML files (other documents are ignored)."""
    crds = []
    for path in paths:
        with open(path, encoding="utf-8") as stream:
            for document in yaml.safe_load_all(stream):
                if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                    crds.append(document)
    return crds


class SandboxAPIServer:
    """An in-memory Kubernetes API server over HTTP, served from a background thread (see module doc)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        crd_paths: Sequence[Path] = (),
        namespaces: Sequence[str] = ("default",),
        bookmark_interval_s: float = 10.0,
        record_requests: bool = False,
        tls_dir: Path | None = None,
        audit_path: Path | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        # With tls_dir: a second, HTTPS port (same API) for in-cluster clients, and its certificate there.
        self.tls_dir = tls_dir
        self.tls_port: int | None = None
        self.ca_path: Path | None = None
        self._store = ObjectStore()  # lives in the server's event loop once started: reach it over HTTP
        namespace_type = self._store.find_type("", "v1", "namespaces")
        assert namespace_type is not None
        for namespace in namespaces:
            self._store.create(namespace_type, None, {"metadata": {"name": namespace}})
        for crd in load_crds(list(crd_paths)):
            self._store.create(CRD_RESOURCE, None, crd)
        self._handler = ApiHttpHandler(self._store, bookmark_interval_s=bookmark_interval_s)
        if record_requests:
            self._handler.request_log = []
        self.audit_path = audit_path  # the audit log as JSON lines too (read by other processes)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # ----- lifecycle
    def start(self) -> SandboxAPIServer:
        if self._thread is not None:
            return self
        self._ready.clear()
        self._startup_error = None
        thread = threading.Thread(target=self._run, name="sandbox-apiserver", daemon=True)
        thread.start()
        if not self._ready.wait(timeout=60):
            raise RuntimeError("the sandbox API server did not start listening within 60 s")
        if self._startup_error is not None:
            thread.join(timeout=10)
            raise RuntimeError(f"the sandbox API server failed to start: {self._startup_error}") from (
                self._startup_error
            )
        self._thread = thread
        return self

    def stop(self) -> None:
        thread, loop, stop_requested = self._thread, self._loop, self._stop_requested
        if thread is None:
            return
        if loop is not None and stop_requested is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may be closing already
                loop.call_soon_threadsafe(stop_requested.set)
        thread.join(timeout=30)
        if thread.is_alive():
            log.warning("the sandbox API server thread did not stop within 30 s")
        self._thread = None
        self._port = None

    def __enter__(self) -> SandboxAPIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:  # reported to start(); never lost silently
            if not self._ready.is_set():
                self._startup_error = error
                self._ready.set()
            else:
                log.exception("the sandbox API server stopped with an error")
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None

    async def _serve(self) -> None:
        self._stop_requested = asyncio.Event()
        self._handler.open()
        self._handler.access.write_audit_to(self.audit_path)
        loop = asyncio.get_running_loop()

        def make_request(
            message: Any, payload: Any, protocol: Any, writer: Any, task: Any
        ) -> web.BaseRequest:
            return web.BaseRequest(
                message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY_BYTES
            )

        server = web.Server(
            self._handler, request_factory=make_request, handler_cancellation=True, access_log=None
        )
        runner = web.ServerRunner(server, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
            self._port = int(sockets[0].getsockname()[1]) if sockets else self._requested_port
            self._handler.address = f"{self.host}:{self._port}"
            if self.tls_dir is not None:
                cert_path, key_path = tls.write_certificate(self.tls_dir, self.host)
                context = tls.server_context(cert_path, key_path)
                secure = web.TCPSite(runner, self.host, 0, ssl_context=context)
                await secure.start()
                secure_sockets = getattr(secure._server, "sockets", None) or []
                self.tls_port = int(secure_sockets[0].getsockname()[1])
                self.ca_path = cert_path
            self._ready.set()
            await self._stop_requested.wait()
        finally:
            self._handler.close_watches()
            await asyncio.sleep(0)  # let the watch streams see the end before connections close
            await runner.cleanup()
            self._handler.access.write_audit_to(None)

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request served so far (with ``record_requests=True``), e.g. to check RBAC needs."""
        if self._handler.request_log is None:
            raise RuntimeError("construct the server with record_requests=True to record requests")
        return list(self._handler.request_log)

    @property
    def faults(self) -> Faults:
        """Errors and stalls to inject into matching requests (see ``faults``)."""
        return self._handler.faults

    @property
    def audit_log(self) -> list[AuditRecord]:
        """(user, verb, group, resource, subresource, namespace, name, code) of every request so far."""
        return list(self._handler.access.audit)

    def issue_token(self, namespace: str, service_account: str) -> str:
        """A token for an existing service account (what the TokenRequest API returns), for pods."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the sandbox API server is not running")
        issued = asyncio.run_coroutine_threadsafe(self._issue(namespace, service_account), loop)
        return str(issued.result(timeout=30)["status"]["token"])

    async def _issue(self, namespace: str, service_account: str) -> dict[str, Any]:
        return self._handler.access.issue_token(namespace, service_account)

    def serve_pod_logs(self, provider: Callable[[str, str, str], Path | None]) -> None:
        """Serve ``pods/log`` (``kubectl logs [-f]``) from ``provider(namespace, pod, container)``'s file."""
        self._handler.streams.pod_logs = provider

    # ----- client configuration
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the sandbox API server is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CONTEXT_NAME, "cluster": {"server": self.url}}],
            "users": [{"name": CONTEXT_NAME, "user": {"token": SANDBOX_TOKEN}}],
            "contexts": [
                {
                    "name": CONTEXT_NAME,
                    "context": {"cluster": CONTEXT_NAME, "user": CONTEXT_NAME, "namespace": namespace},
                }
            ],
            "current-context": CONTEXT_NAME,
            "preferences": {},
        }

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace), sort_keys=False), encoding="utf-8")
        return path

    def api_client(self) -> kubernetes.client.ApiClient:
        import kubernetes.client

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"authorization": SANDBOX_TOKEN}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return kubernetes.client.ApiClient(configuration)


@contextlib.contextmanager
def _signals_stop(stop: threading.Event) -> Iterator[None]:
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bloomz_sandbox.apiserver",
        description="Serve an in-memory Kubernetes API emulator (a development tool) until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--crd", action="append", type=Path, default=[], help="a CRD YAML file to preload")
    parser.add_argument(
        "--namespace", action="append", default=[], help="namespaces to create (default: default)"
    )
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for this server here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    server = SandboxAPIServer(
        host=args.host, port=args.port, crd_paths=args.crd, namespaces=args.namespace or ["default"]
    )
    stop = threading.Event()
    with _signals_stop(stop), server:
        print(f"Kubernetes API emulator listening on {server.url}", flush=True)
        if args.kubeconfig:
            server.write_kubeconfig(args.kubeconfig)
            print(
                f"kubeconfig written to {args.kubeconfig} (export KUBECONFIG={args.kubeconfig})", flush=True
            )
        stop.wait()
    return 0
