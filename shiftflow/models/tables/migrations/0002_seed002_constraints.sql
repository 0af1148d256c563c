-- 0002_seed002_constraints: the business rules and partial indexes of seed 002
-- (prompt operations), adapted to ShiftFlow's tables. Rows written before this
-- migration are repaired first, so adding the checks cannot fail on old data.

-- Executions ---------------------------------------------------------------------------
-- Older writers (and seed 000/003 imports) used other names for the same statuses.
UPDATE "execution" SET "status" = 'SUCCEEDED' WHERE "status" IN ('COMPLETED', 'SUCCESS');
UPDATE "execution" SET "status" = 'TIMED_OUT' WHERE "status" = 'TIMEOUT';
UPDATE "execution" SET "status" = 'RUNNING'
 WHERE "status" IN ('CHECKING_CONDITIONS', 'CONDITIONS_MET', 'EXECUTING', 'RETRY');
-- A finished execution without a completion time gets the best estimate available.
UPDATE "execution"
   SET "completed_at" = COALESCE("started_at" + "duration_ms" * INTERVAL '1 millisecond', "started_at", "created_at")
 WHERE "status" IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT') AND "completed_at" IS NULL;
UPDATE "execution" SET "started_at" = "created_at" WHERE "status" = 'RUNNING' AND "started_at" IS NULL;
UPDATE "execution" SET "completed_at" = NULL
 WHERE "status" IN ('PENDING', 'RUNNING', 'PAUSED') AND "completed_at" IS NOT NULL;

ALTER TABLE "execution" ADD CONSTRAINT "chk_execution_status_logic" CHECK ((status IN ('PENDING', 'RUNNING', 'PAUSED') AND completed_at IS NULL AND (status <> 'RUNNING' OR started_at IS NOT NULL)) OR (status IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT') AND completed_at IS NOT NULL));

-- The dashboard's "my running and failed executions".
CREATE INDEX "idx_executions_user_status" ON "execution" ("triggered_by_id", "status") WHERE status IN ('RUNNING', 'FAILED');

-- LLM calls (seed 002's execution metrics) ------------------------------------------------
UPDATE "llm_call" SET "cost_usd" = NULL WHERE "cost_usd" < 0;
UPDATE "llm_call" SET "latency_ms" = NULL WHERE "latency_ms" <= 0;
UPDATE "llm_call" SET "completed_at" = "started_at" WHERE "completed_at" < "started_at";

ALTER TABLE "llm_call" ADD CONSTRAINT "chk_llm_call_cost_positive" CHECK (cost_usd IS NULL OR cost_usd >= 0);
ALTER TABLE "llm_call" ADD CONSTRAINT "chk_llm_call_latency_positive" CHECK (latency_ms IS NULL OR latency_ms > 0);
ALTER TABLE "llm_call" ADD CONSTRAINT "chk_llm_call_completion_order" CHECK (completed_at IS NULL OR started_at IS NULL OR completed_at >= started_at);

-- Prompts ----------------------------------------------------------------------------------
UPDATE "prompt" SET "version" = 1 WHERE "version" < 1;
UPDATE "prompt" SET "published_at" = "updated_at" WHERE "status" = 'PUBLISHED' AND "published_at" IS NULL;

ALTER TABLE "prompt" ADD CONSTRAINT "chk_prompt_version_positive" CHECK (version >= 1);
ALTER TABLE "prompt" ADD CONSTRAINT "chk_prompt_published_timestamp" CHECK (status <> 'PUBLISHED' OR published_at IS NOT NULL);

-- The catalogue of published prompts.
CREATE INDEX "idx_prompts_status_published" ON "prompt" ("status", "published_at") WHERE status = 'PUBLISHED';

-- API keys (seed 002/003) -------------------------------------------------------------------
-- Authentication only looks up active keys; the partial index stays small.
CREATE INDEX "idx_api_keys_hash" ON "api_key" ("key_hash") WHERE is_active;
