"""``sluiceway operator``: run the operator against the cluster of the current credentials
(the pod's service account, else kubeconfig), or print the Pipeline CRD."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import yaml

from sluiceway_common import logs, settings
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import StartupError, run_until_signalled
from sluiceway_common.observe import Observer
from sluiceway_operator import crd

NAMESPACES = settings.Option(
    "SLUICEWAY_OPERATOR_NAMESPACES",
    lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
    "namespaces whose Pipelines the operator serves (empty: every namespace)",
    allowed="a comma-separated list of namespaces, or empty for all",
    default="",
)
OPTIONS = (NAMESPACES, settings.METRICS_PORT, settings.LOG_LEVEL)
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("run", "crd"), default="run",
                        help="run the operator (default), or print the CRD as YAML")  # fmt: skip
    parser.add_argument("--chart", action="store_true",
                        help="crd: as the Helm chart's template (behind crds.install)")  # fmt: skip
    settings.add_options(parser, OPTIONS)


async def serve(namespaces: tuple[str, ...], metrics_port: int, stop: asyncio.Event) -> int:
    import kopf

    import sluiceway_operator.handlers  # noqa: F401 -- registers the handlers
    from sluiceway_operator import metrics

    async with Observer(metrics_port) as observer:
        ready = asyncio.Event()

        async def watching() -> None:
            if not ready.is_set():
                raise RuntimeError("not watching Pipelines yet")

        observer.add_check("operator", watching)
        await kopf.operator(
            standalone=True,  # one replica (the chart's Deployment is Recreate): no peering
            clusterwide=not namespaces,
            namespaces=namespaces,
            stop_flag=stop,
            ready_flag=ready,
            memo=kopf.Memo(metrics=metrics.register(observer.registry)),
        )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "crd":
        if args.chart:
            sys.stdout.write(crd.chart_template())
        else:
            yaml.safe_dump(crd.definition(), sys.stdout, sort_keys=False, width=100)
        return 0
    values = settings.resolve(args, OPTIONS)
    if not (os.path.exists(SERVICE_ACCOUNT_TOKEN) or os.environ.get("KUBECONFIG")
            or os.path.exists(os.path.expanduser("~/.kube/config"))):  # fmt: skip
        raise StartupError(
            "no Kubernetes credentials: not running in a pod, and neither KUBECONFIG nor "
            "~/.kube/config is there"
        )
    logs.setup(values["log_level"])
    return run_until_signalled(
        lambda stop: serve(values["operator_namespaces"], values["metrics_port"], stop)
    )


COMMAND = Command("operator", "run the Kubernetes operator for Pipeline resources", configure, run)
