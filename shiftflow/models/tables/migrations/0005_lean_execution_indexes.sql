-- 0005_lean_execution_indexes: fewer index entries per execution and step row.
--
-- Every index costs each INSERT, and each UPDATE of an indexed column (status) writes a new
-- entry in every index of the row (no HOT update). The engine benchmark's trigger path wrote
-- 10 entries per execution and 6 per step row; after this, 5 and 2 for a finished one.
-- * Single-column foreign-key indexes whose column leads a composite index are dropped
--   (workflow_id, workspace_id, step_execution.execution_id): the composite serves lookups
--   and ON DELETE CASCADE alike.
-- * Indexes read only for rows that have a value become partial: parent, triggered_by,
--   concurrency lanes (only PENDING/RUNNING executions are counted), timers and waits.
-- * step_execution (status, created_at) is dropped: no query reads it.
-- * New: the timer loop's execution deadlines, which had no index.

DROP INDEX IF EXISTS "execution_workflow_id";
DROP INDEX IF EXISTS "execution_workspace_id";
DROP INDEX IF EXISTS "execution_parent_id";
DROP INDEX IF EXISTS "execution_triggered_by_id_created_at";
DROP INDEX IF EXISTS "execution_workflow_id_concurrency_key_status";
DROP INDEX IF EXISTS "step_execution_execution_id";
DROP INDEX IF EXISTS "step_execution_status_created_at";
DROP INDEX IF EXISTS "step_execution_status_resume_at";
DROP INDEX IF EXISTS "step_execution_status_timeout_at";
DROP INDEX IF EXISTS "step_execution_wait_key";

CREATE INDEX "idx_execution_parent" ON "execution" ("parent_id") WHERE parent_id IS NOT NULL;
CREATE INDEX "idx_execution_triggered_by" ON "execution" ("triggered_by_id", "created_at") WHERE triggered_by_id IS NOT NULL;
CREATE INDEX "idx_execution_lane" ON "execution" ("workflow_id", "concurrency_key", "status") WHERE status IN ('PENDING', 'RUNNING');
CREATE INDEX "idx_execution_deadline" ON "execution" ("deadline_at") WHERE status IN ('RUNNING', 'PENDING') AND deadline_at IS NOT NULL;
CREATE INDEX "idx_step_execution_wait_key" ON "step_execution" ("wait_key") WHERE wait_key IS NOT NULL;
CREATE INDEX "idx_step_execution_resume" ON "step_execution" ("status", "resume_at") WHERE resume_at IS NOT NULL;
CREATE INDEX "idx_step_execution_timeout" ON "step_execution" ("status", "timeout_at") WHERE timeout_at IS NOT NULL;
