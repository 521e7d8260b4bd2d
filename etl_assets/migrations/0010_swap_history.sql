-- Swap loads (write_mode 'swap') keep the previous version of a table beside it, under a derived
-- name, until the next swap. This table records which table that is and how index names pair up,
-- so `etl-assets rollback TARGET` can swap it back (and a rollback can itself be rolled back).
CREATE TABLE IF NOT EXISTS etl.swap_history (
    id            bigserial PRIMARY KEY,
    target_schema text        NOT NULL,
    target_name   text        NOT NULL,
    previous_name text        NOT NULL,
    index_names   jsonb       NOT NULL DEFAULT '{}'::jsonb, -- live index name -> previous table's index name
    action        text        NOT NULL CHECK (action IN ('swap', 'rollback')),
    run_id        text,
    rows          bigint,
    swapped_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS swap_history_target ON etl.swap_history (target_schema, target_name, id DESC);
