"""``sluiceway operator``: run the operator against the cluster of the current credentials
(the pod's service account, else kubeconfig), or print the Pipeline CRD."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml

from sluiceway_common import logs, settings
from sluiceway_common.cli import Command
from sluiceway_common.lifecycle import StartupError, run_until_signalled
from sluiceway_common.observe import Observer
from sluiceway_common.settings import ConfigError
from sluiceway_operator import crd, peering
from sluiceway_operator.peering import Peering
from sluiceway_operator.spec import NO_DEFAULTS, Defaults, Image

NAMESPACES = settings.Option(
    "SLUICEWAY_OPERATOR_NAMESPACES",
    lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
    "namespaces whose Pipelines the operator serves (empty: every namespace)",
    allowed="a comma-separated list of namespaces, or empty for all",
    default="",
)
# An image repository without a tag or digest (a registry's port is allowed), and a tag as
# the OCI distribution spec has it.
REPOSITORY = re.compile(r"[^\s/:@]+(:[0-9]+)?(/[^\s/:@]+)*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def matching(pattern: re.Pattern[str], longest: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip()
        if text and (len(text) > longest or not pattern.fullmatch(text)):
            raise ValueError("")
        return text

    return parse


IMAGE_REPOSITORY = settings.Option(
    "SLUICEWAY_OPERATOR_IMAGE_REPOSITORY",
    matching(REPOSITORY, 512),
    "image prefix of a Pipeline without spec.image: it runs <prefix>-fetcher, -writer and "
    "-admin (empty: every Pipeline names its images)",
    allowed="an image repository without a tag, e.g. registry.example.com/data/sluiceway "
    "(at most 512 characters), or empty",
    default="",
)
IMAGE_TAG = settings.Option(
    "SLUICEWAY_OPERATOR_IMAGE_TAG",
    matching(TAG, 128),
    "image tag of a Pipeline without spec.image (with SLUICEWAY_OPERATOR_IMAGE_REPOSITORY)",
    allowed="an image tag (1-128 of letters, digits, _ . -, not starting with . or -), or empty",
    default="",
)
# A Kubernetes object's name (an RFC 1123 subdomain), and a namespace's (a DNS label).
OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
PEERING = settings.Option(
    "SLUICEWAY_OPERATOR_PEERING",
    matching(OBJECT_NAME, 253),
    "name of the kopf peering object(s) the operator's replicas share, so that one acts and "
    "the others stand by (empty: no peering, the operator acts alone)",
    allowed="a Kubernetes object name (lowercase letters, digits, - and ., at most 253), or empty",
    default="",
)
PEERING_LIFETIME = settings.Option(
    "SLUICEWAY_OPERATOR_PEERING_LIFETIME",
    settings.integer(5, 3600, unit="seconds"),
    "how long a replica's peering record holds unrenewed: the longest a standby waits for an "
    "active replica lost without exiting",
    default="30",
)
OPTIONS = (NAMESPACES, IMAGE_REPOSITORY, IMAGE_TAG, PEERING, PEERING_LIFETIME,
           settings.METRICS_PORT, settings.LOG_LEVEL)  # fmt: skip
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def pipeline_defaults(values: dict[str, Any]) -> Defaults:
    """What the operator gives a Pipeline that leaves it out, from its resolved settings;
    the image prefix and tag come both or not at all."""
    repository, tag = values["operator_image_repository"], values["operator_image_tag"]
    if bool(repository) != bool(tag):
        given, empty = (
            (IMAGE_REPOSITORY, IMAGE_TAG) if repository else (IMAGE_TAG, IMAGE_REPOSITORY)
        )
        raise ConfigError(f"{empty.env} is empty but {given.env} is set: set both (a "
                          "Pipeline without spec.image runs <repository>-<component>:<tag>) "
                          "or neither")  # fmt: skip
    return Defaults(Image(repository, tag) if repository else None)


def peering_of(values: dict[str, Any]) -> Peering | None:
    """What the operator's replicas share, from its resolved settings; None: no peering.
    Namespaces must be named, not matched by a pattern: a peering object goes in each."""
    if not (name := values["operator_peering"]):
        return None
    namespaces: tuple[str, ...] = values["operator_namespaces"]
    if patterns := [each for each in namespaces if not NAMESPACE_NAME.fullmatch(each)]:
        raise ConfigError(f"{NAMESPACES.env} has {', '.join(map(repr, patterns))}, not a "
                          f"namespace's name: with {PEERING.env} set, name each namespace "
                          "(a peering object goes in each), or leave it empty for all")  # fmt: skip
    return Peering(name, values["operator_peering_lifetime"], namespaces)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("run", "crd"), default="run",
                        help="run the operator (default), or print the CRD as YAML")  # fmt: skip
    parser.add_argument("--chart", action="store_true",
                        help="crd: as the Helm chart's template (behind crds.install)")  # fmt: skip
    settings.add_options(parser, OPTIONS)


async def serve(namespaces: tuple[str, ...], metrics_port: int, stop: asyncio.Event,
                defaults: Defaults = NO_DEFAULTS,
                sharing: Peering | None = None) -> int:  # fmt: skip
    import kopf

    import sluiceway_operator.handlers  # noqa: F401 -- registers the handlers
    from sluiceway_operator import metrics

    kopf_settings = kopf.OperatorSettings()
    peering.configure(kopf_settings, sharing, time.time())

    async with Observer(metrics_port) as observer:
        ready = asyncio.Event()

        async def watching() -> None:
            if not ready.is_set():
                raise RuntimeError("not watching Pipelines yet")

        observer.add_check("operator", watching)
        await kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            settings=kopf_settings,
            stop_flag=stop,
            ready_flag=ready,
            memo=kopf.Memo(
                metrics=metrics.register(observer.registry), defaults=defaults, peering=sharing
            ),
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
    defaults = pipeline_defaults(values)
    sharing = peering_of(values)
    if not (os.path.exists(SERVICE_ACCOUNT_TOKEN) or os.environ.get("KUBECONFIG")
            or os.path.exists(os.path.expanduser("~/.kube/config"))):  # fmt: skip
        raise StartupError(
            "no Kubernetes credentials: not running in a pod, and neither KUBECONFIG nor "
            "~/.kube/config is there"
        )
    logs.setup(values["log_level"])
    if sharing is not None:
        # kopf says at INFO when a replica pauses for a peer and when it resumes: the two
        # lines that tell which replica acts.
        logging.getLogger("kopf._core.engines.peering").setLevel(
            max(logging.INFO, logging.getLevelNamesMapping()[values["log_level"]])
        )
    return run_until_signalled(
        lambda stop: serve(
            values["operator_namespaces"], values["metrics_port"], stop, defaults, sharing
        )
    )


COMMAND = Command("operator", "run the Kubernetes operator for Pipeline resources", configure, run)
