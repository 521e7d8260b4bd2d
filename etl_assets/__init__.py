"""etl-assets: crash-safe, COPY-fast PostgreSQL-to-PostgreSQL ELT as Dagster software-defined assets."""

__version__ = "0.1.0"
