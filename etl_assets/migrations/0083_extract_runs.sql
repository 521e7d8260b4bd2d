-- Who holds an extract (etl_assets/extract/runlock.py).
--
-- One run at a time extracts a target: the run holds a session-level advisory lock in the warehouse
-- from before it reads its cursor or checkpoint until after its last commit. The lock is the truth;
-- this row only names the holder for the message a refused or waiting run prints. The holder writes
-- it right after taking the lock and deletes it when it lets go; a row left by a holder that died is
-- stale as soon as its lock is free (backend_pid is no longer the lock's session), and the next
-- holder overwrites it.
CREATE TABLE etl.extract_runs (
    target      text PRIMARY KEY,         -- warehouse table as "schema.table" (as in etl.state)
    run_id      text,                     -- the Dagster run id (NULL: a run outside Dagster)
    pid         integer NOT NULL,         -- the holder's operating-system process
    host        text NOT NULL,            -- the host that process runs on
    backend_pid integer NOT NULL,         -- the warehouse session holding the advisory lock
    started_at  timestamptz NOT NULL DEFAULT now()
);
