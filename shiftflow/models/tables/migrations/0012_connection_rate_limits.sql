-- 0012_connection_rate_limits: a connection's own rate limits, over its integration's
-- (`{"per_second", "per_minute", "burst"}`, each field optional; NULL: the integration's),
-- and an index for finding an artifact row by its location (a tool step checks that an
-- input artifact is its workspace's; retention finds the rows of stored files).

ALTER TABLE "connection" ADD COLUMN "rate_limits" JSONB;
CREATE INDEX "artifact_url" ON "artifact" ("url");
