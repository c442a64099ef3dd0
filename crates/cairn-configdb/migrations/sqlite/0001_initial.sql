-- cairn configuration database, SQLite flavour. Keep in step with ../postgres/0001_initial.sql:
-- same tables, columns, constraints and indexes. Times are microseconds since the Unix epoch (UTC).

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('administrator', 'restore-operator', 'viewer')),
    created_at    INTEGER NOT NULL
);

CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('login', 'api')),
    token_hash  TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER
);
CREATE INDEX tokens_user ON tokens (user_id);
CREATE INDEX tokens_expires ON tokens (expires_at);

CREATE TABLE hosts (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL CHECK (kind IN ('image-folder', 'qemu', 'hyperv')),
    location   TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE vms (
    id           INTEGER PRIMARY KEY,
    host_id      INTEGER NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    external_id  TEXT NOT NULL,
    name         TEXT NOT NULL,
    present      INTEGER NOT NULL CHECK (present IN (0, 1)),
    last_seen_at INTEGER NOT NULL,
    UNIQUE (host_id, external_id)
);

CREATE TABLE disks (
    id             INTEGER PRIMARY KEY,
    vm_id          INTEGER NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    disk_key       TEXT NOT NULL,
    name           TEXT NOT NULL,
    path           TEXT NOT NULL,
    format         TEXT NOT NULL,
    capacity_bytes INTEGER NOT NULL CHECK (capacity_bytes >= 0),
    present        INTEGER NOT NULL CHECK (present IN (0, 1)),
    UNIQUE (vm_id, disk_key)
);

CREATE TABLE repositories (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    path              TEXT NOT NULL,
    is_default        INTEGER NOT NULL CHECK (is_default IN (0, 1)),
    max_tasks         INTEGER NOT NULL CHECK (max_tasks >= 1),
    read_limit_bytes  INTEGER CHECK (read_limit_bytes > 0),
    write_limit_bytes INTEGER CHECK (write_limit_bytes > 0),
    created_at        INTEGER NOT NULL
);
CREATE UNIQUE INDEX repositories_one_default ON repositories (is_default) WHERE is_default = 1;

CREATE TABLE proxies (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    address    TEXT,
    max_tasks  INTEGER NOT NULL CHECK (max_tasks >= 1),
    created_at INTEGER NOT NULL
);

CREATE TABLE jobs (
    id                 INTEGER PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    repository_id      INTEGER NOT NULL REFERENCES repositories (id) ON DELETE RESTRICT,
    block_size         INTEGER NOT NULL CHECK (block_size > 0),
    compression        TEXT NOT NULL,
    encryption         TEXT,
    method             TEXT NOT NULL,
    retention_points   INTEGER NOT NULL CHECK (retention_points >= 1),
    schedule           TEXT,
    backup_window      TEXT,
    retries            INTEGER NOT NULL CHECK (retries >= 0),
    retry_wait_seconds INTEGER NOT NULL CHECK (retry_wait_seconds >= 0),
    enabled            INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    version            INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX jobs_repository ON jobs (repository_id);

CREATE TABLE job_vms (
    job_id   INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    vm_id    INTEGER NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    PRIMARY KEY (job_id, vm_id)
);
CREATE INDEX job_vms_vm ON job_vms (vm_id);

CREATE TABLE job_excluded_disks (
    job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    disk_id INTEGER NOT NULL REFERENCES disks (id) ON DELETE CASCADE,
    PRIMARY KEY (job_id, disk_id)
);
CREATE INDEX job_excluded_disks_disk ON job_excluded_disks (disk_id);

CREATE TABLE sessions (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    state      TEXT NOT NULL CHECK (state IN ('waiting', 'running', 'success', 'warning', 'failed', 'stopped')),
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    statistics TEXT NOT NULL
);
-- Keyset paging, newest first: (started_at, id) overall and per job.
CREATE INDEX sessions_started ON sessions (started_at, id);
CREATE INDEX sessions_job_started ON sessions (job_id, started_at, id);
CREATE INDEX sessions_active ON sessions (state) WHERE state IN ('waiting', 'running');

CREATE TABLE tasks (
    id            INTEGER PRIMARY KEY,
    session_id    INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    vm_id         INTEGER REFERENCES vms (id) ON DELETE SET NULL,
    disk_id       INTEGER REFERENCES disks (id) ON DELETE SET NULL,
    vm_name       TEXT NOT NULL,
    disk_name     TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('waiting', 'running', 'success', 'warning', 'failed', 'stopped')),
    proxy_id      INTEGER REFERENCES proxies (id) ON DELETE SET NULL,
    repository_id INTEGER REFERENCES repositories (id) ON DELETE SET NULL,
    started_at    INTEGER,
    ended_at      INTEGER,
    statistics    TEXT NOT NULL
);
CREATE INDEX tasks_session ON tasks (session_id);
CREATE INDEX tasks_vm ON tasks (vm_id);
CREATE INDEX tasks_disk ON tasks (disk_id);
CREATE INDEX tasks_proxy ON tasks (proxy_id);
CREATE INDEX tasks_repository ON tasks (repository_id);
CREATE INDEX tasks_active ON tasks (state) WHERE state IN ('waiting', 'running');

CREATE TABLE task_log (
    id      INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    level   TEXT NOT NULL CHECK (level IN ('info', 'warning', 'error')),
    text    TEXT NOT NULL
);
CREATE INDEX task_log_task ON task_log (task_id, id);
