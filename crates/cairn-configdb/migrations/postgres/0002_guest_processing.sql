-- How a job makes the point-in-time view of a running VM (issue: live QEMU backup).
ALTER TABLE jobs ADD COLUMN consistency TEXT NOT NULL DEFAULT 'online';
ALTER TABLE jobs ADD COLUMN require_app_consistency BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE jobs ADD COLUMN pre_freeze_script TEXT;
ALTER TABLE jobs ADD COLUMN post_thaw_script TEXT;
