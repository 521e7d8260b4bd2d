-- Run metrics: one row per asset materialization (or failed / skipped / canceled asset) per run,
-- plus one run-level row (asset IS NULL) for every failed or canceled run.
-- Written during the run by step hooks, and after the run by the run-status sensor / headless runner;
-- the unique key makes every writer idempotent.
CREATE TABLE etl.run_metrics (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job text NOT NULL,
    run_id text NOT NULL,
    asset text,                -- asset key as "a/b"; NULL on the run-level row
    partition text,
    step_key text,
    started_at timestamptz,
    ended_at timestamptz,
    duration_seconds double precision,
    status text NOT NULL CHECK (status IN ('success', 'failed', 'skipped', 'canceled')),
    attempts integer NOT NULL DEFAULT 1,
    records_processed bigint,
    records_failed bigint,
    error text,
    recorded_by text NOT NULL,  -- 'hook' | 'sensor' | 'runner'
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT run_metrics_one_row UNIQUE NULLS NOT DISTINCT (run_id, asset, partition)
);
CREATE INDEX run_metrics_asset_started ON etl.run_metrics (asset, started_at);
CREATE INDEX run_metrics_started ON etl.run_metrics (started_at);
