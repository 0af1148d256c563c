-- 0004_schedule_buffer: overlap BUFFER_ONE remembers the one slot it held back while the
-- previous run of the schedule was still going, and fires it when that run ends.

ALTER TABLE "schedule" ADD COLUMN "pending_fire_at" TIMESTAMP;

CREATE INDEX "idx_schedule_pending" ON "schedule" ("pending_fire_at") WHERE is_active AND pending_fire_at IS NOT NULL;
