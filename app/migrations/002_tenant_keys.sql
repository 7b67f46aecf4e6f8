-- Chats and uploads are keyed by the pair (tenant, user), with the tenant tagged by
-- its kind: 'org:<org>' or 'user:<sub>' (core/principal.py). org_id held the raw org
-- claim, or 'user:<sub>' for a tenant of one, so a token with org 'user:dave' shared
-- dave's tenant. Old rows: an org_id of exactly 'user:' || user_id was written for a
-- tenant of one (it is the only way Herald wrote that value for that user); every
-- other org_id was a named org.

ALTER TABLE conversations ADD COLUMN tenant text;
UPDATE conversations SET tenant = CASE
    WHEN org_id = 'user:' || user_id THEN org_id
    ELSE 'org:' || org_id
END;
ALTER TABLE conversations ALTER COLUMN tenant SET NOT NULL;
ALTER TABLE conversations DROP COLUMN org_id;
DROP INDEX IF EXISTS conversations_user_recent;
CREATE INDEX conversations_owner_recent ON conversations (tenant, user_id, updated_at DESC);

ALTER TABLE uploads ADD COLUMN tenant text;
UPDATE uploads SET tenant = CASE
    WHEN org_id = 'user:' || user_id THEN org_id
    ELSE 'org:' || org_id
END;
ALTER TABLE uploads ALTER COLUMN tenant SET NOT NULL;
ALTER TABLE uploads DROP COLUMN org_id;
DROP INDEX IF EXISTS uploads_org_recent;
CREATE INDEX uploads_tenant_recent ON uploads (tenant, created_at DESC);
