"""The drift check and the developer's workflow: Alembic's own CLI, as ``make check`` and the
README run it, against sluiceway's tables in code (``sluiceway_writer.tables``)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sluiceway_writer import schema
from tests.scratch import execute

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Alembic's command line (what `.venv/bin/alembic` runs), optionally after a column has been
# added to the metadata and to nothing else.
ALEMBIC = """
import sys
from alembic.config import main
if sys.argv[1] == "--extra-column":
    import sqlalchemy as sa
    from sluiceway_writer import tables
    tables.records.append_column(sa.Column("extra", sa.Text))
main(sys.argv[2:])
"""


def alembic(
    database_url: str, *args: str, ini: Path = ROOT / "migrations" / "alembic.ini", extra: bool
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", ALEMBIC, "--extra-column" if extra else "-", "-c", str(ini), *args],
        env={"PATH": "/usr/bin:/bin", "SLUICEWAY_DATABASE_URL": database_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ruff(*args: str) -> subprocess.CompletedProcess[str]:
    """ruff with the repository's settings, on a file that may lie outside it."""
    command = [
        str(Path(sys.executable).parent / "ruff"),
        *args,
        "--config",
        str(ROOT / "pyproject.toml"),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


async def test_alembic_check_passes_at_head_and_fails_on_a_column_in_the_metadata_alone(
    empty_database: str,
) -> None:
    await asyncio.to_thread(schema.upgrade, empty_database)
    passed = alembic(empty_database, "check", extra=False)
    assert passed.returncode == 0, passed.stderr
    assert "No new upgrade operations detected" in passed.stdout
    failed = alembic(empty_database, "check", extra=True)
    assert failed.returncode != 0
    said = failed.stdout + failed.stderr
    assert "FAILED: New upgrade operations detected: [('add_column', None, 'records'" in said
    assert "Column('extra', Text()" in said


async def test_alembic_check_sees_what_alembic_leaves_out_unless_asked_and_no_table_of_yours(
    empty_database: str,
) -> None:
    await asyncio.to_thread(schema.upgrade, empty_database)
    await execute(
        empty_database,
        """
        CREATE TABLE users (id bigint PRIMARY KEY, name text);
        ALTER TABLE records_buffer DROP CONSTRAINT records_buffer_pkey, ADD PRIMARY KEY (id, key);
        ALTER TABLE records ADD CONSTRAINT records_key_check CHECK (key <> ''),
            ALTER written_at SET DEFAULT clock_timestamp();
        """,
    )
    failed = alembic(empty_database, "check", extra=False)
    said = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "('remove_constraint', PrimaryKeyConstraint(" in said
    assert "('add_constraint', PrimaryKeyConstraint(" in said
    assert "('remove_constraint', CheckConstraint(" in said
    assert "'modify_default', None, 'records', 'written_at'" in said
    assert "users" not in said


async def test_autogenerate_writes_the_revision_that_brings_the_database_to_the_metadata(
    empty_database: str, tmp_path: Path
) -> None:
    # A copy of the migrations, so that the revision written is this test's alone.
    migrations = Path(shutil.copytree(ROOT / "migrations", tmp_path / "migrations"))
    ini = migrations / "alembic.ini"
    await asyncio.to_thread(schema.upgrade, empty_database)
    written = alembic(
        empty_database, "revision", "--autogenerate", "--rev-id", "0099", "-m", "records: extra",
        ini=ini, extra=True,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    (revision,) = (migrations / "versions").glob("*_0099_records_extra.py")
    code = revision.read_text()
    assert f'down_revision: str | None = "{schema.head()}"' in code
    assert 'op.add_column("records", sa.Column("extra", sa.Text(), nullable=True))' in code
    assert 'op.drop_column("records", "extra")' in code
    # As `make lint` holds every revision: the write hooks sorted and formatted it.
    for check in (["check"], ["format", "--check"]):
        linted = ruff(*check, str(revision))
        assert linted.returncode == 0, linted.stdout
    # Upgraded by it, the database is what the metadata says.
    assert alembic(empty_database, "upgrade", "head", ini=ini, extra=True).returncode == 0
    assert alembic(empty_database, "check", ini=ini, extra=True).returncode == 0
