-- 0017_hot_step_updates: a step's claim (and each renewal of its lease) becomes a HOT update.
--
-- PostgreSQL writes an UPDATE as HOT (no new index entry anywhere, the new row version on
-- the same page) only when no column that any index names, as a key or in its WHERE,
-- changes value, and the page has room. Every step_execution update used to change
-- `status`, a key of the timer indexes and the lease index's predicate, so none was HOT:
-- a claim wrote 3 index entries, a completion 2, on top of the row insert's 2.
-- * The timer indexes lose `status` (their queries still filter it, on the few rows that
--   have a timer): (resume_at), (timeout_at), each partial on the column being set.
-- * The lease sweep's index (lease_until) WHERE status = 'RUNNING' becomes the set of open
--   steps, keyed and filtered on columns a claim never changes: (created_at) WHERE
--   completed_at IS NULL. Every step that is not final (PENDING, QUEUED, RUNNING, WAITING)
--   has completed_at NULL: a row is inserted without it, only an outcome sets it, and no
--   final step becomes live again. The sweep and the heartbeat's renew and release say
--   `completed_at IS NULL` so they read this index. A claim changes status, claimed_by,
--   lease_until, started_at and attempts, none of them indexed now: HOT. A completion
--   sets completed_at and leaves the index: not HOT (2 entries, as before).
-- * fillfactor 80: a fifth of each new page is left free for the updated versions (a HOT
--   update needs its new version on the same page). Pages written before keep their fill
--   until rewritten.

ALTER TABLE "step_execution" SET (fillfactor = 80);

DROP INDEX IF EXISTS "idx_step_execution_resume";
DROP INDEX IF EXISTS "idx_step_execution_timeout";
DROP INDEX IF EXISTS "idx_step_execution_lease";

CREATE INDEX "idx_step_execution_resume" ON "step_execution" ("resume_at") WHERE resume_at IS NOT NULL;
CREATE INDEX "idx_step_execution_timeout" ON "step_execution" ("timeout_at") WHERE timeout_at IS NOT NULL;
CREATE INDEX "idx_step_execution_open" ON "step_execution" ("created_at") WHERE completed_at IS NULL;
