-- The dead-letter table: one row per distinct rejected input row of an asset (and partition).
-- It holds WHOLE ROWS (payload) so that they can be replayed: treat it like the most sensitive table
-- it receives rows from. Only the pipeline's own role (the owner) reads it; grant SELECT on it to
-- named operators only, and give everyone else the payload-free view etl.dead_letter_counts.
CREATE TABLE etl.dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asset_key       text NOT NULL,            -- Dagster asset key, "/"-joined: "clean/customers"
    partition_key   text,                     -- NULL for an unpartitioned asset
    target          text,                     -- warehouse table the row was headed for: "clean.customers"
    run_id          text NOT NULL,            -- run of the latest failure
    first_run_id    text NOT NULL,            -- run of the first failure
    step            text,                     -- Dagster step key of the latest failure
    stage           text NOT NULL,            -- "transform", "validate", "replay", ...
    error_class     text NOT NULL,
    error_message   text NOT NULL,
    error_trace     text,                     -- formatted traceback where an exception was raised
    payload         jsonb NOT NULL,           -- the original row (or an operator's correction of it)
    payload_types   jsonb NOT NULL DEFAULT '{}'::jsonb,  -- column -> type code, to rebuild the frame
    row_hash        text NOT NULL,            -- sha256 of the original row's canonical JSON: its identity
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 1,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'replayed', 'discarded')),
    resolved_run_id text,                     -- the replaying run, or who discarded it
    resolved_at     timestamptz,
    CONSTRAINT dead_letters_row UNIQUE NULLS NOT DISTINCT (asset_key, partition_key, row_hash)
);

CREATE INDEX dead_letters_status ON etl.dead_letters (asset_key, status);

REVOKE ALL ON etl.dead_letters FROM PUBLIC;

-- What may be shown to anyone: counts, no payloads, no messages (messages can quote row values).
CREATE VIEW etl.dead_letter_counts AS
SELECT asset_key, partition_key, status, stage, error_class,
       count(*)            AS rows,
       sum(attempts)       AS attempts,
       min(first_failed_at) AS first_failed_at,
       max(last_failed_at)  AS last_failed_at
FROM etl.dead_letters
GROUP BY asset_key, partition_key, status, stage, error_class;
