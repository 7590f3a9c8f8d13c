"""sluiceway's admin commands: what a person (or a CronJob) runs against a pipeline.

``enqueue`` queues keys, ``status`` reads depths, rows and failed keys (``--watch``: the live
view of :mod:`sluiceway_admin.watch`), ``failed`` and ``dead`` inspect and retry what could not
be fetched or landed, ``rate`` changes the shared rate limit while the pipeline runs, and
``demo`` runs the whole pipeline on the sample API. Each is a ``sluiceway`` subcommand through
the ``sluiceway.commands`` entry points. This package imports :mod:`sluiceway_common` and no
service; no service and not the operator imports it.
"""
