-- Agent certificate renewal. A renewal is staged: the new certificate's fingerprint is stored
-- beside the current one, both are accepted, and the first request made with the new one makes
-- it current (the old one is refused from then on). An agent that lost the answer keeps working
-- with its current certificate and renews again. renew_requested_at: an administrator asked for
-- a new certificate (and key) before the current one is due.
ALTER TABLE agents ADD COLUMN next_cert_fingerprint TEXT;
ALTER TABLE agents ADD COLUMN next_cert_not_after BIGINT;
ALTER TABLE agents ADD COLUMN renew_requested_at BIGINT;
CREATE UNIQUE INDEX agents_next_cert_fingerprint ON agents (next_cert_fingerprint);
