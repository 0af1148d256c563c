-- 0010_step_claim_leases: a RUNNING step's claim is held by a process identity with a
-- lease its process renews while it works (models.leases). A copy of the step's message
-- takes the step over only once the holder is provably gone, and the timer loop
-- re-publishes a RUNNING step whose lease ran out (its holder died with no message left).

ALTER TABLE "step_execution" ALTER COLUMN "claimed_by" TYPE VARCHAR(128);
ALTER TABLE "step_execution" ADD COLUMN "lease_until" TIMESTAMP;
CREATE INDEX "idx_step_execution_lease" ON "step_execution" ("lease_until") WHERE status = 'RUNNING';
