"""The audit: find state that will be lost, in compose files and on the live engine.

* :mod:`~cargohold.audit.knowledge` — stateful images, their data paths and consistency modes;
* :mod:`~cargohold.audit.model` — what rules look at (workloads, mounts, volumes);
* :mod:`~cargohold.audit.rules` — the rules, pure functions with stable ids;
* :mod:`~cargohold.audit.collect_files` / :mod:`~cargohold.audit.collect_live` — inputs;
* :mod:`~cargohold.model.backups` — backup facts the backup rules judge;
* :mod:`~cargohold.audit.sarif`, :mod:`~cargohold.audit.fix` — SARIF output, ``--fix``.

The use cases are in :mod:`cargohold.services.audit`.
"""
