-- Second factor (TOTP, RFC 6238) per user: the shared secret (base32), whether it is confirmed
-- and in force, and the last time step accepted (a code is never accepted twice).
ALTER TABLE users ADD COLUMN totp_secret TEXT;
ALTER TABLE users ADD COLUMN totp_enabled BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN totp_last_step BIGINT;

-- A token's scope: 'full', or 'totp-setup' for the login token of an administrator who must set
-- up a second factor before doing anything else.
ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'full' CHECK (scope IN ('full', 'totp-setup'));

-- The audit log: who did what and when. Append-only: the trigger refuses updates, deletes and
-- truncation, and each entry carries the BLAKE3 hash of the previous entry's hash and its own
-- fields, so an edited or removed entry breaks the chain. Ids are assigned without gaps by the
-- writer.
CREATE TABLE audit_log (
    id         BIGINT PRIMARY KEY NOT NULL,
    at         BIGINT NOT NULL,
    user_name  TEXT,
    address    TEXT,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_user ON audit_log (user_name);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
