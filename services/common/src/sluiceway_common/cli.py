"""The ``sluiceway`` command.

Subcommands are found through the ``sluiceway.commands`` entry point group, so each package
contributes its own (the fetcher ``fetcher``, the writer ``writer`` and ``migrate``, …) and
this library never imports a member. An image that installs only one member offers only that
member's subcommands. The dispatcher lives in the library because every image needs it and
it holds no command of its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points

from sluiceway_common import COMMAND_GROUP
from sluiceway_common.lifecycle import StartupError
from sluiceway_common.settings import ConfigError


@dataclass(frozen=True)
class Command:
    """A subcommand: ``configure`` adds its arguments, ``run`` returns the exit status.

    ``run`` raises :class:`ConfigError` for a bad setting; the CLI prints its one line and
    exits 2.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def commands(only: str | None = None) -> dict[str, Command]:
    """The installed subcommands; with ``only``, just that one when it is installed, since
    loading a command imports its package and its dependencies."""
    entries = list(entry_points(group=COMMAND_GROUP))
    if only is not None and any(entry.name == only for entry in entries):
        entries = [entry for entry in entries if entry.name == only]
    found = {}
    for entry in entries:
        command = entry.load()
        if not isinstance(command, Command):
            raise TypeError(f"entry point {entry.value} is not a sluiceway Command")
        found[command.name] = command
    return dict(sorted(found.items()))


def parser(chosen: str | None = None) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="sluiceway",
        description="Pull records from rate-limited HTTP APIs into PostgreSQL.",
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands(chosen).values():
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure(child)
        child.set_defaults(_run=command.run)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and not argv[0].startswith("-") else None
    args = parser(chosen).parse_args(argv)
    try:
        status: int = args._run(args)
    except ConfigError as exc:
        print(f"sluiceway {args.command}: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"sluiceway {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
