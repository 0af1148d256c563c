-- 0009_workspace_quotas: per-workspace admission quotas (issue 11, finding 8). Every column
-- is NULL by default, which means "the deployment's default" (SHIFTFLOW_QUOTA_*): adding
-- them changes nothing for existing workspaces. `shiftflow quotas set` fills them in.
-- The partial index holds only PENDING executions (those waiting for a concurrency slot),
-- which the cap on a workspace's queued executions counts.

ALTER TABLE "workspace" ADD COLUMN "quota_webhooks_per_second" REAL;
ALTER TABLE "workspace" ADD COLUMN "quota_webhooks_burst" INTEGER;
ALTER TABLE "workspace" ADD COLUMN "quota_runs_per_second" REAL;
ALTER TABLE "workspace" ADD COLUMN "quota_runs_burst" INTEGER;
ALTER TABLE "workspace" ADD COLUMN "quota_max_queued_executions" INTEGER;
ALTER TABLE "workspace" ADD CONSTRAINT "chk_workspace_quotas" CHECK (
    (quota_webhooks_per_second IS NULL OR quota_webhooks_per_second >= 0)
    AND (quota_webhooks_burst IS NULL OR quota_webhooks_burst >= 1)
    AND (quota_runs_per_second IS NULL OR quota_runs_per_second >= 0)
    AND (quota_runs_burst IS NULL OR quota_runs_burst >= 1)
    AND (quota_max_queued_executions IS NULL OR quota_max_queued_executions >= 0)
);
CREATE INDEX "idx_execution_queued" ON "execution" ("workspace_id") WHERE status = 'PENDING';
