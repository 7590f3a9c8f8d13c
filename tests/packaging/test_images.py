"""The container images, as far as this machine can check them without a Docker engine: the
one Dockerfile's own install commands, run for each member into a clean virtualenv, give an
environment with only that member's package and the shared library, whose ``sluiceway``
offers that image's commands and starts them far enough to print ``--help``; and every
workspace member but the library is an image."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"
DOCKERFILE = ROOT / "Dockerfile"
PACKAGES = {"sluiceway_admin", "sluiceway_fetcher", "sluiceway_writer", "sluiceway_operator",
            "sluiceway_sample_api"}  # fmt: skip
IMAGES = {
    # MEMBER: (its package, the commands it offers, what else must not be in the image)
    # (admin holds httpx since `enqueue --http` lists keys from the upstream and `sink suggest
    # --fetch` fetches a few)
    "admin": ("sluiceway_admin", {"enqueue", "status", "failed", "dead", "rate", "sink", "demo"},
              {"kopf", "alembic"}),
    "fetcher": ("sluiceway_fetcher", {"fetcher"}, {"kopf", "alembic", "asyncpg"}),
    "writer": ("sluiceway_writer", {"writer", "migrate"}, {"kopf", "httpx"}),
    "operator": ("sluiceway_operator", {"operator"}, {"alembic", "asyncpg"}),
    "sample-api": ("sluiceway_sample_api", {"sample-api"}, {"kopf", "alembic", "asyncpg",
                                                            "httpx"}),
}  # fmt: skip


def uv() -> str:
    found = UV if UV.exists() else None
    if found is None:
        from shutil import which

        path = which("uv")
        if path is None:
            pytest.fail("uv not found: run `make install` first", pytrace=False)
        return path
    return str(found)


def install_commands(member: str) -> list[list[str]]:
    """The Dockerfile's ``RUN uv sync …`` lines, in order, as the build runs them for
    ``--build-arg MEMBER=member``."""
    text = DOCKERFILE.read_text()
    lines = re.findall(r"^RUN (uv sync .*)$", text, re.M)
    member_arg = re.compile(r"\$\{MEMBER(:\?[^}]*)?\}")
    return [shlex.split(member_arg.sub(member, line))[1:] for line in lines]


def final_stage() -> str:
    return DOCKERFILE.read_text().rsplit("\nFROM ", 1)[1]


def names() -> set[str]:
    """The project names of the workspace members the root pyproject lists."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {
        tomllib.loads((ROOT / path / "pyproject.toml").read_text())["project"]["name"]
        for path in root["tool"]["uv"]["workspace"]["members"]
    }


def test_every_workspace_member_but_the_library_is_an_image() -> None:
    # `make images` builds one per member the root pyproject lists: a new member is one edit.
    assert {f"sluiceway-{member}" for member in IMAGES} == names() - {"sluiceway-common"}
    made = subprocess.run(["make", "-s", "-n", "images", "TAG=t", "REGISTRY=r"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    built = re.search(r"for member in ([\w -]+);", made)
    assert built is not None, made
    assert set(built.group(1).split()) == set(IMAGES)


@pytest.mark.parametrize("member", sorted(IMAGES))
def test_each_image_installs_only_its_package_and_offers_its_commands(
    member: str, tmp_path: Path
) -> None:
    package, own, absent = IMAGES[member]
    absent = absent | (PACKAGES - {package})
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_PREFERENCE": "system",
           "UV_PYTHON": sys.executable}  # fmt: skip
    commands = install_commands(member)
    assert len(commands) == 2, "a dependency layer, then the code"
    assert "--no-install-workspace" in commands[0]
    # uv keys its cache of a member's wheel on the member's pyproject alone: without a
    # refresh, code changed since the last build would be tested as it was then.
    refresh = [arg for name in names() for arg in ("--refresh-package", name)]
    for command in commands:
        subprocess.run([uv(), *command, *refresh], cwd=ROOT, env=env, check=True,
                       capture_output=True)  # fmt: skip
    site = next(venv.glob("lib/python3*/site-packages"))
    installed = {path.name for path in site.iterdir()}
    assert {package, "sluiceway_common"} <= installed
    assert not absent & installed, absent & installed
    # Installed as wheels, not as links back into the source tree.
    assert not list(site.glob("*sluiceway*.pth")), list(site.glob("*sluiceway*.pth"))

    sluiceway = venv / "bin" / "sluiceway"
    run_env = {**os.environ, "SLUICEWAY_MIGRATIONS_DIR": str(ROOT / "migrations")}
    listing = subprocess.run([sluiceway, "--help"], capture_output=True, text=True,
                             check=True, env=run_env).stdout  # fmt: skip
    offered = set(re.findall(r"^    (\w[\w-]*)(?: |$)", listing, re.M))
    assert offered == own, offered
    for subcommand in own:
        result = subprocess.run([sluiceway, subcommand, "--help"], capture_output=True,
                                text=True, env=run_env)  # fmt: skip
        assert result.returncode == 0, result.stderr

    stage = final_stage()
    assert re.search(r"^USER 10001:10001$", stage, re.M), "runs as a non-root user"
    assert 'ENTRYPOINT ["sluiceway"]' in stage
    assert "uv" not in stage.split("\n", 1)[1], "no build tools in the final stage"
