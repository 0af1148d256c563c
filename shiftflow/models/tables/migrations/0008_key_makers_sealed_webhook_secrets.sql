-- 0008_key_makers_sealed_webhook_secrets (issue 11, findings 4 and 9).
--
-- Who made each API key: the member and key that asked, or 'cli' for the operator
-- (NULL on keys made before this migration). Plain ids, like the audit log's.
ALTER TABLE "api_key" ADD COLUMN "created_by_user_id" UUID;
ALTER TABLE "api_key" ADD COLUMN "created_by_key_id" UUID;
ALTER TABLE "api_key" ADD COLUMN "created_via" VARCHAR(10);

-- Webhook signing secrets, sealed like connection secrets (no secret at rest in clear).
-- Before this SQL runs, in the same transaction, the migration's data step
-- (migrations/data_steps.py) has replaced each row's clear list in "secrets" by
-- {"sealed": <ciphertext>, "key_id": <key id>}, using SHIFTFLOW_SECRET_KEYS (it refuses
-- to run without them when there is anything to seal). This SQL moves those into their
-- columns and refuses to finish while any secret is left in clear: run by hand without
-- the data step, it rolls back.
ALTER TABLE "webhook" ADD COLUMN "sealed_secrets" TEXT;
ALTER TABLE "webhook" ADD COLUMN "key_id" VARCHAR(64);
UPDATE "webhook" SET "sealed_secrets" = "secrets" ->> 'sealed', "key_id" = "secrets" ->> 'key_id'
    WHERE jsonb_typeof("secrets") = 'object';
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM "webhook" WHERE "sealed_secrets" IS NULL) THEN
        RAISE EXCEPTION 'webhook signing secrets would stay in clear: run `shiftflow migrate` with SHIFTFLOW_SECRET_KEYS set';
    END IF;
END $$;
ALTER TABLE "webhook" DROP COLUMN "secrets";
ALTER TABLE "webhook" ALTER COLUMN "sealed_secrets" SET NOT NULL;
