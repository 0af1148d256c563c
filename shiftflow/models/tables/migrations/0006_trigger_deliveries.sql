-- 0006_trigger_deliveries: delivery counts of redelivered trigger messages, so that a
-- trigger that kills its worker process is quarantined after SHIFTFLOW_DELIVERY_LIMIT
-- deliveries (steps count theirs on step_execution; a trigger has no row before its
-- execution exists). Written only on redeliveries; rows older than 7 days are purged.

CREATE TABLE "trigger_delivery" (
    "id" UUID NOT NULL PRIMARY KEY,
    "message_id" VARCHAR(64) NOT NULL,
    "workflow_id" VARCHAR(64) NOT NULL,
    "dedup_key" VARCHAR(255) NOT NULL,
    "deliveries" INTEGER NOT NULL,
    "first_at" TIMESTAMP NOT NULL,
    "last_at" TIMESTAMP NOT NULL
);
CREATE UNIQUE INDEX "trigger_delivery_message_id" ON "trigger_delivery" ("message_id");
