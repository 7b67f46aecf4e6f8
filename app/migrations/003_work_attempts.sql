-- PostgreSQL is the record of work (docs/design.md "Reconciliation"): how many times the
-- reconciler enqueued a message's reply or an upload's import again after its RQ job was
-- lost; past RECONCILE_MAX_ATTEMPTS it gives up with the error code `work_lost`.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;

-- What the reconciler scans every pass, without reading every message or upload ever made.
CREATE INDEX IF NOT EXISTS messages_queued ON messages (created_at)
    WHERE role = 'user' AND status = 'queued';
CREATE INDEX IF NOT EXISTS uploads_unfinished ON uploads (updated_at)
    WHERE status IN ('receiving', 'queued', 'validating', 'processing');
