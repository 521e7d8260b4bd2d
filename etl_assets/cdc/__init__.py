"""Change data capture: a trigger-filled change log per source table, read safely and applied
exactly once.

- :mod:`etl_assets.cdc.capture`: the SQL that installs, removes, inspects and prunes capture in the
  source database (schema ``etl_cdc``); every statement can be printed for review (``--dry-run``).
- :mod:`etl_assets.cdc.reader`: which log entries are safe to read (never one that a still-running
  transaction could precede) and the net effect of a range of them.
- :mod:`etl_assets.cdc.apply`: applies a range to the warehouse in one transaction together with the
  consumed position.
- :mod:`etl_assets.cdc.snapshot`: the first load after install (or ``etl-assets reset``): a
  consistent snapshot that later ranges continue from exactly.
- :mod:`etl_assets.cdc.sync`: one run of one table (snapshot or apply), with its report.
- :mod:`etl_assets.cdc.asset`: the Dagster asset for ``extract: cdc``.
"""
