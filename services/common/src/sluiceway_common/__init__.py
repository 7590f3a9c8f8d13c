"""Shared library of sluiceway's services.

Vocabulary used across the code base:

* a *pipeline* is one named flow of keys to rows; its name namespaces the queues, the Redis keys
  and the rows of the ``records`` table, so several pipelines share one broker and one database;
* a *fetch task* is one message on ``sluiceway.<pipeline>.fetch`` naming one key;
* a *record* is what a fetch produced: the key, the upstream's JSON and when it was fetched;
  it travels on ``sluiceway.<pipeline>.records`` and lands as one row;
* a *dead letter* is a message the writer could not land, kept on
  ``sluiceway.<pipeline>.records.dead`` with the reason.

This package imports no member: every other member of the workspace imports it.
"""

# The entry-point group through which each installed member offers its ``sluiceway``
# subcommands (its ``[project.entry-points."sluiceway.commands"]``).
COMMAND_GROUP = "sluiceway.commands"
