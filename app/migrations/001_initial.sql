-- Conversations belong to one user; uploads to an org (API.md "Authentication and tenancy").
CREATE TABLE IF NOT EXISTS conversations (
    id          uuid PRIMARY KEY,
    user_id     text NOT NULL,
    org_id      text NOT NULL,
    title       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS conversations_user_recent ON conversations (user_id, updated_at DESC);

CREATE TABLE IF NOT EXISTS messages (
    id               uuid PRIMARY KEY,
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role             text NOT NULL CHECK (role IN ('user', 'assistant')),
    text             text NOT NULL DEFAULT '',
    status           text NOT NULL,
    model            text,
    error_code       text,
    reply_to         uuid,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS messages_conversation_order ON messages (conversation_id, created_at, id);

CREATE TABLE IF NOT EXISTS uploads (
    id               uuid PRIMARY KEY,
    org_id           text NOT NULL,
    user_id          text NOT NULL,
    filename         text NOT NULL,
    content_type     text NOT NULL DEFAULT 'text/csv',
    size_bytes       bigint NOT NULL DEFAULT 0,
    column_types     jsonb,
    status           text NOT NULL DEFAULT 'receiving',
    job_id           text,
    progress_percent integer NOT NULL DEFAULT 0,
    rows_processed   bigint NOT NULL DEFAULT 0,
    result           jsonb,
    error            jsonb,
    table_name       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS uploads_org_recent ON uploads (org_id, created_at DESC);

-- The file itself, in chunks, so any worker on any machine can stream it back.
CREATE TABLE IF NOT EXISTS upload_chunks (
    upload_id  uuid NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    seq        integer NOT NULL,
    data       bytea NOT NULL,
    PRIMARY KEY (upload_id, seq)
);

CREATE TABLE IF NOT EXISTS upload_errors (
    upload_id  uuid NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    row_number bigint NOT NULL,
    column_name text NOT NULL,
    value      text,
    error      text NOT NULL
);
CREATE INDEX IF NOT EXISTS upload_errors_by_upload ON upload_errors (upload_id, row_number);
