"""The images ``make images-local`` builds, and how the tests run what they hold.

Not with a container runtime (``podman run`` is refused on this kind of machine: the sandbox
denies the runtime's setrlimit calls) but as one would by hand: the image's filesystem,
mounted read-only by ``podman image mount``, entered with ``unshare --root`` in the image's
working directory as the image's user, with the image's environment and nothing of the
host's. The network is the host's, so services on 127.0.0.1 answer inside as they do outside.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ServiceUrls
from tests.e2e.conftest import Processes

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "localhost/sluiceway"
# A tag of each checkout's own: two checkouts' test runs never swap each other's images.
TAG = "test-" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]
# From nothing: debootstrap, then five builds that download their wheels (see the README).
BUILD_TIMEOUT = 1200


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


@dataclass(frozen=True)
class Image:
    """A built image: where its filesystem is mounted, and the config a runtime obeys."""

    name: str
    root: Path
    env: dict[str, str]
    uid: int
    gid: int
    workdir: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]

    @classmethod
    def inspect(cls, name: str, root: Path) -> Image:
        config = json.loads(podman("image", "inspect", name))[0]["Config"]
        uid, _, gid = config.get("User", "").partition(":")
        # A name would need the image's /etc/passwd; Kubernetes' runAsNonRoot needs a number.
        if not (uid.isdigit() and gid.isdigit()):
            pytest.fail(f"{name}: USER {config.get('User')!r}, not uid:gid", pytrace=False)
        return cls(
            name=name,
            root=root,
            env=dict(item.split("=", 1) for item in config.get("Env") or ()),
            uid=int(uid),
            gid=int(gid),
            workdir=config.get("WorkingDir") or "/",
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
        )

    def exec(self, *argv: str) -> list[str]:
        """``argv`` run inside the image (its PATH finds the program) as its user."""
        return ["unshare", f"--root={self.root}", f"--wd={self.workdir}",
                f"--setuid={self.uid}", f"--setgid={self.gid}", *argv]  # fmt: skip

    def command(self, *args: str) -> list[str]:
        """What a runtime runs: the entrypoint with ``args``, or with CMD when none are given."""
        return self.exec(*self.entrypoint, *(args or self.cmd))


class InImage(Processes):
    """:class:`Processes` run from an image: its entrypoint, and its environment with the
    test's ``SLUICEWAY_*`` settings added."""

    def __init__(self, image: Image, services: ServiceUrls, database_url: str, pipeline: str,
                 logs: Path) -> None:  # fmt: skip
        super().__init__(services, database_url, pipeline, logs)
        self.image = image
        ours = {name: value for name, value in self.env.items() if name.startswith("SLUICEWAY_")}
        self.env = {**image.env, **ours}

    def command(self, *args: str) -> list[str]:
        return self.image.command(*args)


def unavailable() -> str | None:
    """Why no image can be built here, as scripts/bootstrap-podman.sh says it; None when one
    can (the script installs what is missing, and is silent when nothing is)."""
    result = subprocess.run(["bash", "scripts/bootstrap-podman.sh"], cwd=ROOT,
                            capture_output=True, text=True)  # fmt: skip
    return None if result.returncode == 0 else " ".join(result.stderr.split()) or "no reason"


def build(log: Path) -> None:
    """``make images-local`` under this checkout's tag; its output goes to ``log``."""
    with log.open("w") as out:
        result = subprocess.run(["make", "-s", "images-local", f"REGISTRY={REGISTRY}",
                                 f"TAG={TAG}"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                timeout=BUILD_TIMEOUT)  # fmt: skip
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"make images-local failed (exit {result.returncode}), {log}:\n{tail}",
                    pytrace=False)  # fmt: skip


@contextmanager
def mounted(member: str) -> Iterator[Image]:
    """The member's image, mounted read-only while the context lasts."""
    name = f"{REGISTRY}/sluiceway-{member}:{TAG}"
    root = Path(podman("image", "mount", name).strip())
    try:
        yield Image.inspect(name, root)
    finally:
        podman("image", "umount", name)
