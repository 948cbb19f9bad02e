"""What a node tells the API server about its pods: pods/status from the runner's records, and Events."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from bloomz_sandbox.node import pod_status, scheduling
from bloomz_sandbox.node.records import HOST_IP, MERGE_PATCH, PodRecord

log = logging.getLogger(__name__)


def pod_view(record: PodRecord, now: float) -> pod_status.PodView:
    """The pod as the runner sees it, in pod_status' terms (pure)."""
    containers = []
    for name, container in record.containers.items():
        process = container.process
        base = {
            "name": name,
            "image": container.spec.get("image", ""),
            "restart_count": container.restart_count,
            "last_termination": container.last_termination,
        }
        if container.final is not None:
            view = pod_status.ContainerView(state="terminated", terminated=container.final, **base)
        elif process is not None:
            view = pod_status.ContainerView(
                state="running",
                started_at=process.started_at,
                process_id=process.pid,
                ready=container.ready,
                **base,
            )
        elif record.waiting_message:
            view = pod_status.ContainerView(
                state="waiting", reason=pod_status.WAITING_CREATING, message=record.waiting_message, **base
            )
        elif container.error:
            view = pod_status.ContainerView(
                state="waiting", reason=container.error_reason, message=container.error, **base
            )
        elif container.restart_count > 0:
            delay = max(0.0, container.next_start_at - now)
            message = f"back-off {math.ceil(delay)}s restarting failed container={name} pod={record.name}"
            view = pod_status.ContainerView(
                state="waiting", reason=pod_status.WAITING_BACKOFF, message=message, **base
            )
        else:
            view = pod_status.ContainerView(state="waiting", reason=pod_status.WAITING_CREATING, **base)
        containers.append(view)
    return pod_status.PodView(
        scheduled=record.scheduled,
        unschedulable_message=record.unschedulable_message,
        pod_ip=record.pod_ip,
        host_ip=HOST_IP if record.scheduled else "",
        start_time=record.start_time,
        containers=containers,
        qos_class=scheduling.qos_class(record.pod),
    )


def comparable(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status without what alone is no reason to write it again: the back-off countdown, probe times."""
    body = json.loads(json.dumps(status))
    for container in body.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == pod_status.WAITING_BACKOFF:
            waiting.pop("message", None)
    for condition in body.get("conditions") or []:
        condition.pop("lastTransitionTime", None)
    return dict(body)


class StatusReporter:
    """Writes pods/status when it changed, and posts Events as kube-scheduler and kubelets do."""

    def __init__(self, core: Any, node_name: str) -> None:
        self.core = core
        self.node_name = node_name  # the reporting host when a pod is not bound yet

    def report(self, record: PodRecord) -> None:
        now = time.time()
        previous = record.last_status or (record.pod.get("status") or {})
        status = pod_status.pod_status(pod_view(record, now), previous, now)
        if record.last_status is not None and comparable(status) == comparable(record.last_status):
            return
        try:
            self.core.patch_namespaced_pod_status(
                record.name,
                record.namespace,
                {"status": status},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except ApiException as error:
            if error.status != 404:
                log.warning("sandbox: status of %s not written: %s", record.label, error.reason)
            return
        record.last_status = status

    def event(self, record: PodRecord, reason: str, message: str, kind: str = "Normal") -> None:
        """A core/v1 Event on the pod (`kubectl get events`)."""
        now = pod_status.rfc3339(time.time())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{record.name}.", "namespace": record.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": record.name,
                "namespace": record.namespace,
                "uid": record.uid,
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "sandbox-podrunner", "host": record.node_name or self.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(record.namespace, event, _preload_content=False)
        except Exception as error:  # events are informative: never let them break the loop
            log.debug("sandbox: event %s on %s not posted: %s", reason, record.label, error)
