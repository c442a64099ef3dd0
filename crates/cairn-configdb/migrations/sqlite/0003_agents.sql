-- Agents (data movers on proxies and repository servers) and their one-time enrolment tokens
-- (issue 6). An agent is identified by the SHA-256 fingerprint of the client certificate the
-- server's CA issued it at enrolment; a revoked agent keeps its row (revoked_at set).
CREATE TABLE agents (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    roles            TEXT NOT NULL,
    cert_fingerprint TEXT NOT NULL UNIQUE,
    cert_not_after   INTEGER NOT NULL,
    version          TEXT NOT NULL,
    max_tasks        INTEGER NOT NULL CHECK (max_tasks >= 1),
    free_bytes       INTEGER NOT NULL CHECK (free_bytes >= 0),
    address          TEXT,
    last_seen_at     INTEGER,
    revoked_at       INTEGER,
    created_at       INTEGER NOT NULL
);

CREATE TABLE agent_enrolment_tokens (
    id         INTEGER PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    roles      TEXT NOT NULL,
    created_by INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    agent_id   INTEGER REFERENCES agents (id) ON DELETE SET NULL
);
CREATE INDEX agent_enrolment_tokens_expires ON agent_enrolment_tokens (expires_at);
