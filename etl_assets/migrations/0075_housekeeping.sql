-- Housekeeping and cadence state (issue 11).
--
-- etl.quality_cadence: when a costly whole-table task last ran for a target, so that automated
-- incremental runs skip it until its cadence is due: task 'profile' (the column profile after a
-- write). One row per (target, task), upserted by the task itself.
CREATE TABLE etl.quality_cadence (
    target      text NOT NULL,            -- warehouse table as "schema.table"
    task        text NOT NULL,            -- 'profile'
    last_run_at timestamptz NOT NULL,
    run_id      text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (target, task)
);

-- etl.source_deletes: keys present in a warehouse target but gone from its source, found by the
-- delete detection job for tables declared `deletes: flag` (rows are kept and listed here). Each
-- detection run replaces the target's rows in the same transaction that finds them.
CREATE TABLE etl.source_deletes (
    target      text NOT NULL,
    key         jsonb NOT NULL,           -- the primary-key values, as {"column": "value as text"}
    detected_at timestamptz NOT NULL DEFAULT now(),
    run_id      text,
    PRIMARY KEY (target, key)
);
