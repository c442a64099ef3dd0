-- Distributed data movers (issue 6): repositories owned by an agent, proxies that are agents,
-- a job's chosen proxy, and network throttling rules.

-- A repository whose folder lives on (and is written only by) a repository agent; NULL = the
-- backup server's own disks.
ALTER TABLE repositories ADD COLUMN agent_id INTEGER REFERENCES agents (id) ON DELETE RESTRICT;

-- A proxy that is an agent with the proxy role; NULL = the backup server itself.
ALTER TABLE proxies ADD COLUMN agent_id INTEGER REFERENCES agents (id) ON DELETE CASCADE;
CREATE UNIQUE INDEX proxies_agent ON proxies (agent_id) WHERE agent_id IS NOT NULL;

-- Network throttling: traffic from an address in from_cidr to one in to_cidr (either direction
-- of a transfer is matched by its source and target data movers) is limited to limit_bytes per
-- second, shared equally by the transfers it applies to; only inside the window when one is set.
CREATE TABLE throttle_rules (
    id          INTEGER PRIMARY KEY,
    from_cidr   TEXT NOT NULL,
    to_cidr     TEXT NOT NULL,
    limit_bytes INTEGER NOT NULL CHECK (limit_bytes > 0),
    time_window TEXT,
    created_at  INTEGER NOT NULL
);
