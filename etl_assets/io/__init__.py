"""The warehouse IO layer: table names, the type mapping, bulk COPY, write modes, swap, reads, and
the Dagster IO manager built on them. See README "The PostgreSQL IO manager"."""
