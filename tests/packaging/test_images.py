"""The container images. Every workspace member but the library is an image. The one
Dockerfile's own install commands, run for each member into a clean virtualenv, give an
environment with only that member's package and the shared library, whose ``sluiceway``
offers that image's commands and starts them far enough to print ``--help``.

Then the images themselves, built here by ``make images-local`` (podman, no Docker engine;
skipped, saying why, where podman or debootstrap cannot be had) and run from their own
filesystems, mounted read-only, as their own user with their own environment (see
:mod:`tests.packaging.local_images`): each holds only its package and offers only its
commands, every module of its package imports, and each does its job against the real
services: the writer's migrates a new database and lands records, the fetcher's fetches from
the sample API, the admin's enqueues and reports, the operator's prints the chart's CRD and
the sample API's answers as the sample data says.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aio_pika.abc import AbstractConnection

from sluiceway_common import codec, topology
from sluiceway_sample_api.data import user
from sluiceway_writer import schema
from tests.conftest import ServiceUrls
from tests.e2e.conftest import Processes, sample_api
from tests.integration.helpers import depth, drain, eventually, publish
from tests.packaging import local_images
from tests.packaging.local_images import Image, InImage

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"
DOCKERFILE = ROOT / "Dockerfile"
PACKAGES = {"sluiceway_admin", "sluiceway_fetcher", "sluiceway_writer", "sluiceway_operator",
            "sluiceway_sample_api"}  # fmt: skip
IMAGES = {
    # MEMBER: (its package, the commands it offers, what else must not be in the image)
    # (admin holds httpx since `enqueue --http` lists keys from the upstream and `sink suggest
    # --fetch` fetches a few)
    "admin": ("sluiceway_admin",
              {"enqueue", "status", "failed", "dead", "rate", "sink", "queues", "demo"},
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


def offered(listing: str) -> set[str]:
    """The subcommands ``sluiceway --help`` lists."""
    return set(re.findall(r"^    (\w[\w-]*)(?: |$)", listing, re.M))


def assert_holds_only_its_own(site: Path, member: str) -> None:
    """``site`` (a site-packages) holds the member's package and the library, as wheels, and
    none of what only other images need."""
    package, _, absent = IMAGES[member]
    installed = {path.name for path in site.iterdir()}
    assert {package, "sluiceway_common"} <= installed
    unwanted = (absent | (PACKAGES - {package})) & installed
    assert not unwanted, unwanted
    # Installed as wheels, not as links back into the source tree.
    assert not list(site.glob("*sluiceway*.pth")), list(site.glob("*sluiceway*.pth"))


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
    own = IMAGES[member][1]
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
    assert_holds_only_its_own(next(venv.glob("lib/python3*/site-packages")), member)

    sluiceway = venv / "bin" / "sluiceway"
    run_env = {**os.environ, "SLUICEWAY_MIGRATIONS_DIR": str(ROOT / "migrations")}
    listing = subprocess.run([sluiceway, "--help"], capture_output=True, text=True,
                             check=True, env=run_env).stdout  # fmt: skip
    assert offered(listing) == own, listing
    for subcommand in own:
        result = subprocess.run([sluiceway, subcommand, "--help"], capture_output=True,
                                text=True, env=run_env)  # fmt: skip
        assert result.returncode == 0, result.stderr

    stage = final_stage()
    assert re.search(r"^USER 10001:10001$", stage, re.M), "runs as a non-root user"
    assert 'ENTRYPOINT ["sluiceway"]' in stage
    assert "uv" not in stage.split("\n", 1)[1], "no build tools in the final stage"


# The first of these builds the images: its time limit holds the build's.
built = pytest.mark.timeout(local_images.BUILD_TIMEOUT + 120)
# Every module of a package, imported: a runtime dependency the image lacks fails here even
# where no command below reaches it (the operator's kopf, say).
IMPORT_ALL = """
import importlib, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(module.name)
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Image]]:
    """Every member's image, built by ``make images-local`` and mounted read-only."""
    reason = local_images.unavailable()
    if reason is not None:
        pytest.skip(f"no images built here: {reason}")
    local_images.build(tmp_path_factory.mktemp("images") / "build.log")
    with ExitStack() as stack:
        yield {member: stack.enter_context(local_images.mounted(member)) for member in IMAGES}


@pytest.fixture
def from_image(
    images: dict[str, Image], services: ServiceUrls, database_url: str, pipeline: str,
    tmp_path: Path,
) -> Iterator[Callable[..., InImage]]:  # fmt: skip
    """Processes run from a member's image, on this test's pipeline and services (the
    session's database unless another is given); stopped at the end."""
    made: list[InImage] = []

    def make(member: str, database: str = database_url) -> InImage:
        made.append(InImage(images[member], services, database, pipeline, tmp_path))
        return made[-1]

    yield make
    for processes in made:
        processes.stop_all()


@built
@pytest.mark.parametrize("member", sorted(IMAGES))
def test_each_built_image_holds_its_package_alone_and_offers_its_commands(
    images: dict[str, Image], member: str
) -> None:
    image = images[member]
    assert os.statvfs(image.root).f_flag & os.ST_RDONLY, "mounted read-only: nothing is written"
    assert image.uid != 0, "runs as a non-root user"
    assert image.entrypoint == ("sluiceway",)
    assert_holds_only_its_own(next(image.root.glob("app/venv/lib/python3*/site-packages")), member)
    assert not (image.root / "usr/local/bin/uv").exists(), "no build tools"
    assert not (image.root / "src").exists(), "no source tree"

    # Run as a runtime would with no arguments: the entrypoint and CMD list the commands.
    listing = subprocess.run(image.command(), env=image.env, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert offered(listing.stdout) == IMAGES[member][1], listing.stdout
    package = IMAGES[member][0]
    imported = subprocess.run(image.exec("python", "-c", IMPORT_ALL, package), env=image.env,
                              capture_output=True, text=True)  # fmt: skip
    assert imported.returncode == 0, imported.stderr


@built
@pytest.mark.e2e
async def test_the_writer_image_migrates_a_new_database_then_lands_records(
    from_image: Callable[..., InImage], empty_database: str, pipeline: str,
    amqp_connection: AbstractConnection,
) -> None:  # fmt: skip
    writer = from_image("writer", database=empty_database)
    migrated = writer.run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    conn = await asyncpg.connect(empty_database)
    try:
        assert await schema.current(conn) == schema.head()
        at = datetime.now(UTC)
        payloads = {f"k{i}": {"n": i, "name": f"Zoë {i}"} for i in range(12)}
        await publish(amqp_connection, pipeline, topology.Queues(pipeline).records, [
            codec.encode_record(key, json.dumps(payload).encode(), at)
            for key, payload in payloads.items()
        ])  # fmt: skip
        process = writer.start("writer", "writer", SLUICEWAY_BATCH_SIZE="5",
                               SLUICEWAY_BATCH_TIMEOUT="0.2")  # fmt: skip

        async def landed() -> bool:
            assert process.poll() is None, writer.log("writer")
            count: int = await conn.fetchval("SELECT count(*) FROM records")
            return count == len(payloads)

        await eventually(landed, within=60, what="every record landed")
        assert writer.terminate(process) == 0, writer.log("writer")
        assert "writer stopped: " in writer.log("writer")
        rows = await conn.fetch("SELECT key, payload, pipeline FROM records")
    finally:
        await conn.close()
    assert {row["key"]: json.loads(row["payload"]) for row in rows} == payloads
    assert {row["pipeline"] for row in rows} == {pipeline}


@built
@pytest.mark.e2e
async def test_the_fetcher_image_fetches_from_the_sample_api(
    from_image: Callable[..., InImage], processes: Processes, pipeline: str,
    amqp_connection: AbstractConnection,
) -> None:  # fmt: skip
    queues = topology.Queues(pipeline)
    keys = [f"user-{i}" for i in range(8)]
    _, base = sample_api(processes, "--sample-not-found-rate", "0")
    await publish(amqp_connection, pipeline, queues.fetch, [codec.encode_task(k) for k in keys])
    fetcher = from_image("fetcher")
    process = fetcher.start("fetcher", "fetcher", SLUICEWAY_SOURCE_URL=base + "/users/{key}",
                            SLUICEWAY_RATE_LIMIT="100")  # fmt: skip
    fetched: dict[str, object] = {}

    async def all_fetched() -> bool:
        assert process.poll() is None, fetcher.log("fetcher")
        for message in await drain(amqp_connection, queues.records):
            decoded = codec.decode_message(message.body, message.content_encoding, 1 << 24)
            fetched.update((r.key, json.loads(r.payload)) for r in decoded.records)
        return len(fetched) == len(keys)

    await eventually(all_fetched, within=60, what="every key fetched")
    assert fetcher.terminate(process) == 0, fetcher.log("fetcher")
    assert "fetcher stopped: " in fetcher.log("fetcher")
    assert fetched == {key: user(key) for key in keys}


@built
@pytest.mark.e2e
async def test_the_admin_image_enqueues_and_reports_status(
    from_image: Callable[..., InImage], pipeline: str, amqp_connection: AbstractConnection
) -> None:
    admin = from_image("admin")
    keys = [f"user-{i}" for i in range(25)]
    enqueued = admin.run("enqueue", "-", stdin="\n".join(keys).encode())
    assert enqueued.returncode == 0, enqueued.stderr
    assert await depth(amqp_connection, topology.Queues(pipeline).fetch) == len(keys)
    reported = admin.run("status", "--json")
    assert reported.returncode == 0, reported.stderr
    status = json.loads(reported.stdout)
    ready = {queue["name"]: queue["ready"] for queue in status["queues"]}
    assert ready[topology.Queues(pipeline).fetch] == len(keys)
    assert (status["rows"], status["in_flight"]) == (0, len(keys))


@built
def test_the_operator_image_prints_the_crd_the_chart_ships(images: dict[str, Image]) -> None:
    image = images["operator"]
    printed = subprocess.run(image.command("operator", "crd", "--chart"), env=image.env,
                             capture_output=True, text=True)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    shipped = ROOT / "charts" / "sluiceway" / "templates" / "crds" / "pipelines.sluiceway.io.yaml"
    assert printed.stdout == shipped.read_text()


@built
@pytest.mark.e2e
def test_the_sample_api_image_answers_as_the_sample_data_says(
    from_image: Callable[..., InImage],
) -> None:
    api = from_image("sample-api")
    process, base = sample_api(api, "--sample-not-found-rate", "0")
    with urllib.request.urlopen(f"{base}/users/user-7", timeout=10) as answer:
        assert json.load(answer) == user("user-7")
    assert api.terminate(process) == 0, api.log("sample-api")
