-- 0003_engine_timers_and_flow_control: durable timers (resume_at, timeout_at), event waits
-- (wait_key), execution deadlines, concurrency keys and sub-workflow parent links.

ALTER TABLE "execution" ADD COLUMN "concurrency_key" VARCHAR(200);
ALTER TABLE "execution" ADD COLUMN "deadline_at" TIMESTAMP;
ALTER TABLE "execution" ADD COLUMN "parent_iteration" INTEGER;
ALTER TABLE "execution" ADD COLUMN "parent_step_id" VARCHAR(100);
ALTER TABLE "step_execution" ADD COLUMN "resume_at" TIMESTAMP;
ALTER TABLE "step_execution" ADD COLUMN "timeout_at" TIMESTAMP;
ALTER TABLE "step_execution" ADD COLUMN "wait_key" VARCHAR(300);
CREATE INDEX execution_workflow_id_concurrency_key_status ON execution USING btree (workflow_id, concurrency_key, status);
CREATE INDEX step_execution_status_resume_at ON step_execution USING btree (status, resume_at);
CREATE INDEX step_execution_status_timeout_at ON step_execution USING btree (status, timeout_at);
CREATE INDEX step_execution_wait_key ON step_execution USING btree (wait_key);
