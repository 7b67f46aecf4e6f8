-- Messages still waiting for a reply: what the worker's start-up recovery looks for
-- (jobs/chat/recovery.py), without scanning every message ever sent.
CREATE INDEX IF NOT EXISTS messages_queued ON messages (created_at)
    WHERE role = 'user' AND status = 'queued';
