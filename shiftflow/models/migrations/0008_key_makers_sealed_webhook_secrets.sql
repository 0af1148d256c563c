-- 0008_key_makers_sealed_webhook_secrets (issue 11, findings 4 and 9).
--
-- Who made each API key: the member and key that asked, or 'cli' for the operator
-- (NULL on keys made before this migration). Plain ids, like the audit log's.
ALTER TABLE "api_key" ADD COLUMN "created_by_user_id" UUID;
ALTER TABLE "api_key" ADD COLUMN "created_by_key_id" UUID;
ALTER TABLE "api_key" ADD COLUMN "created_via" VARCHAR(10);
