"""The sandbox's simulated nodes: a local pod runner that schedules pods and runs CPU pods as processes.

- ``podrunner``: the runner (watch loop, binding, container lifecycle, status reporting, deletion);
- ``scheduling``: node fit, anti-affinity and kube-scheduler's messages (pure);
- ``process_spec``, ``processes``: a pod container as a local process group;
- ``pod_status``, ``probes``: pod status and readiness from the processes;
- ``addresses``, ``cluster_dns``, ``volume_sources``: pod IPs, pod DNS names, Secret/ConfigMap volumes.
"""
