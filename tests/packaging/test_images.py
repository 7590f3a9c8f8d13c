"""The container images, as far as this machine can check them without a Docker engine:
each Dockerfile's own install commands, run into a clean virtualenv, give an environment with
only that image's package and the shared library, whose ``sluiceway`` offers that image's
commands and starts them far enough to print ``--help``."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"
SHARED = {"dead", "enqueue", "failed", "rate", "status"}
IMAGES = {
    # Dockerfile: (package, its commands, packages that must not be in the image)
    "services/fetcher/Dockerfile": ("sluiceway_fetcher", {"fetcher"}, {"sluiceway_writer",
                                    "sluiceway_operator", "sluiceway_sample_api", "kopf",
                                    "alembic"}),
    "services/writer/Dockerfile": ("sluiceway_writer", {"writer", "migrate"}, {
                                   "sluiceway_fetcher", "sluiceway_operator",
                                   "sluiceway_sample_api", "kopf"}),
    "operator/Dockerfile": ("sluiceway_operator", {"operator"}, {"sluiceway_fetcher",
                            "sluiceway_writer", "sluiceway_sample_api", "alembic"}),
    "services/sample_api/Dockerfile": ("sluiceway_sample_api", {"sample-api", "demo"}, {
                                       "sluiceway_fetcher", "sluiceway_writer",
                                       "sluiceway_operator", "kopf", "alembic"}),
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


def install_commands(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's ``RUN uv sync …`` lines, in order."""
    text = (ROOT / dockerfile).read_text()
    return [shlex.split(line)[1:] for line in re.findall(r"^RUN (uv sync .*)$", text, re.M)]


def final_stage(dockerfile: str) -> str:
    return (ROOT / dockerfile).read_text().rsplit("\nFROM ", 1)[1]


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_each_image_installs_only_its_package_and_offers_its_commands(
    dockerfile: str, tmp_path: Path
) -> None:
    package, own, absent = IMAGES[dockerfile]
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_PREFERENCE": "system",
           "UV_PYTHON": sys.executable}  # fmt: skip
    commands = install_commands(dockerfile)
    assert len(commands) == 2, "a dependency layer, then the code"
    assert "--no-install-workspace" in commands[0]
    for command in commands:
        subprocess.run([uv(), *command], cwd=ROOT, env=env, check=True,
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
    assert offered == own | SHARED, offered
    for command in own:
        result = subprocess.run([sluiceway, command, "--help"], capture_output=True,
                                text=True, env=run_env)  # fmt: skip
        assert result.returncode == 0, result.stderr

    stage = final_stage(dockerfile)
    assert re.search(r"^USER 10001:10001$", stage, re.M), "runs as a non-root user"
    assert 'ENTRYPOINT ["sluiceway"]' in stage
    cmd = re.search(r'^CMD \["([\w-]+)"', stage, re.M)
    assert cmd is not None
    assert cmd.group(1) in own
    assert "uv" not in stage.split("\n", 1)[1], "no build tools in the final stage"
