-- The state of each target: cursors, chunk checkpoints, snapshot markers. Rows here commit in the
-- same transaction as the data they describe; Dagster metadata only mirrors them.
CREATE TABLE etl.state (
    target      text PRIMARY KEY,          -- the warehouse table, schema-qualified ("raw.orders")
    kind        text NOT NULL,             -- "incremental", "chunked", "cdc", ...
    state       jsonb NOT NULL DEFAULT '{}'::jsonb,
    run_id      text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
