"""`python -m bloomz_operator`: the operator process, a thin wrapper around kopf.run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

import kopf

from . import logfilters
from .handlers import register_handlers
from .metrics import OperatorMetrics
from .settings import LOG_LEVELS, Settings, SettingsError, load_settings
from .shutdown import DEFAULT_DEADLINE_S, BoundedShutdown

LOG_FORMATS = {"plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bloomz_operator",
        description="Kopf operator for BloomzInference resources (inference.bloomz.dev/v1alpha1).",
    )
    parser.add_argument(
        "--config", help="settings YAML file (default: $BLOOMZ_OPERATOR_CONFIG, else built-ins)"
    )
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="namespace to watch (repeatable; overrides config)",
    )
    parser.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, help="overrides the config's logLevel"
    )
    parser.add_argument("--liveness-port", type=int, help="port of the /healthz endpoint (overrides config)")
    parser.add_argument(
        "--metrics-port", type=int, help="port of the Prometheus endpoint, 0 = none (overrides config)"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="full",
        help="Kopf's log format: json = one JSON object per line (for log pipelines)",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="no Kopf peering (one operator replica; the chart's default)",
    )
    parser.add_argument(
        "--shutdown-timeout-s",
        type=float,
        default=DEFAULT_DEADLINE_S,
        help="after SIGTERM/SIGINT, exit (code 1) if still running after this long (e.g. a stalled API call)",
    )
    return parser.parse_args(argv)


def effective_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """The settings file, overridden by the command line."""
    if args.all_namespaces:
        settings = replace(settings, namespaces=())
    elif args.namespace:
        settings = replace(settings, namespaces=tuple(args.namespace))
    if args.log_level:
        settings = replace(settings, log_level=args.log_level)
    if args.liveness_port:
        settings = replace(settings, liveness_port=args.liveness_port)
    if args.metrics_port is not None:
        settings = replace(settings, metrics_port=args.metrics_port)
    return settings


def bind_host() -> str:
    # BLOOMZ_BIND_HOST (as for the runtime): the local sandbox and tests bind to a loopback address.
    return os.environ.get("BLOOMZ_BIND_HOST") or "0.0.0.0"


def liveness_endpoint(port: int) -> str:
    return f"http://{bind_host()}:{port}/healthz"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = effective_settings(args, load_settings(args.config))
    except SettingsError as error:
        print(f"bloomz-operator: {error}", file=sys.stderr)
        return 2
    # Kopf installs its own log handler; one more (basicConfig) would print every line twice.
    kopf.configure(verbose=settings.log_level == "DEBUG", log_format=LOG_FORMATS[args.log_format])
    logging.getLogger().setLevel(getattr(logging, settings.log_level))
    logfilters.install(settings.log_level)
    registry = kopf.OperatorRegistry()
    metrics = OperatorMetrics()
    metrics.serve(settings.metrics_port, bind_host())
    register_handlers(registry, settings, metrics=metrics)
    shutdown = BoundedShutdown(args.shutdown_timeout_s)

    @kopf.on.startup(id="bounded-shutdown", registry=registry)
    async def take_over_signals(**_: object) -> None:
        # Startup handlers run after Kopf has set its own signal handlers: these replace them.
        shutdown.install(asyncio.get_running_loop())

    kopf.run(
        registry=registry,
        standalone=args.standalone,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness_endpoint(settings.liveness_port),
        stop_flag=shutdown.stop_flag,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
