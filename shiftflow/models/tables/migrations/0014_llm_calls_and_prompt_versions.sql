-- 0014_llm_calls_and_prompt_versions: the engine writes LLM calls and runs prompts.
-- A workspace may cap what its LLM calls cost per UTC day (NULL: the deployment's default).
-- An LLM call row names the call within its step (call_key: a redelivered step reuses the
-- answer it already paid for), the estimate reserved against the budget while the real
-- cost is unknown, and the whole answer (response). A prompt version carries its own model
-- settings (config) and life cycle: DRAFT, PUBLISHED (who and when), ARCHIVED.

ALTER TABLE "workspace" ADD COLUMN "llm_daily_budget_usd" NUMERIC(12, 6);
ALTER TABLE "workspace" ADD CONSTRAINT "chk_workspace_llm_budget"
    CHECK (llm_daily_budget_usd IS NULL OR llm_daily_budget_usd >= 0);

ALTER TABLE "llm_call" ADD COLUMN "call_key" VARCHAR(100);
ALTER TABLE "llm_call" ADD COLUMN "cost_estimate_usd" NUMERIC(10, 6);
ALTER TABLE "llm_call" ADD COLUMN "response" JSONB;
ALTER TABLE "llm_call" ADD CONSTRAINT "chk_llm_call_estimate_positive"
    CHECK (cost_estimate_usd IS NULL OR cost_estimate_usd >= 0);

ALTER TABLE "prompt_version" ADD COLUMN "config" JSONB NOT NULL DEFAULT '{}';
ALTER TABLE "prompt_version" ALTER COLUMN "config" DROP DEFAULT;
ALTER TABLE "prompt_version" ADD COLUMN "status" VARCHAR(10) NOT NULL DEFAULT 'DRAFT';
ALTER TABLE "prompt_version" ALTER COLUMN "status" DROP DEFAULT;
ALTER TABLE "prompt_version" ADD COLUMN "published_at" TIMESTAMP;
ALTER TABLE "prompt_version" ADD COLUMN "published_by_id" UUID REFERENCES "user" ("id") ON DELETE SET NULL;
ALTER TABLE "prompt_version" ADD COLUMN "archived_at" TIMESTAMP;
ALTER TABLE "prompt_version" ADD CONSTRAINT "chk_prompt_version_status"
    CHECK (status IN ('DRAFT', 'PUBLISHED', 'ARCHIVED'));
ALTER TABLE "prompt_version" ADD CONSTRAINT "chk_prompt_version_published_at"
    CHECK (status <> 'PUBLISHED' OR published_at IS NOT NULL);

-- A version's content never changes once created (runs pin the version they ran): only its
-- status columns may move. Refused here too, not only by the code that writes versions.
CREATE FUNCTION "prompt_version_immutable"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.template IS DISTINCT FROM OLD.template OR NEW.variables IS DISTINCT FROM OLD.variables
            OR NEW.config IS DISTINCT FROM OLD.config OR NEW.version IS DISTINCT FROM OLD.version
            OR NEW.prompt_id IS DISTINCT FROM OLD.prompt_id THEN
        RAISE EXCEPTION 'prompt version % is immutable: add a new version instead', OLD.version
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER "prompt_version_immutable" BEFORE UPDATE ON "prompt_version"
    FOR EACH ROW EXECUTE FUNCTION "prompt_version_immutable"();
