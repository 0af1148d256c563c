-- 0007_swap_lineage: one order per swap across a whole re-run lineage (issue 11).
--
-- execution.lineage_root: a re-run's first ancestor (NULL on an execution that is its own
-- root), so that every re-run of an execution, and re-run of a re-run, finds the same swap.
-- sideshift_swap: the identity (root execution, step, iteration) every order of a swap
-- belongs to; its row is the lock taken before any order of the swap is planned, sent,
-- adopted or reconciled. Existing re-runs and orders are placed in their lineage here
-- (sub-workflow executions started before this migration stay their own roots).

ALTER TABLE "execution" ADD COLUMN "lineage_root" UUID;
CREATE INDEX idx_execution_lineage ON execution USING btree (lineage_root) WHERE (lineage_root IS NOT NULL);

WITH RECURSIVE chain (id, root) AS (
    SELECT id, id FROM execution WHERE source <> 'rerun' OR parent_id IS NULL
    UNION ALL
    SELECT e.id, chain.root FROM execution e JOIN chain ON e.parent_id = chain.id WHERE e.source = 'rerun'
)
UPDATE execution SET lineage_root = chain.root
FROM chain
WHERE execution.id = chain.id AND chain.root <> execution.id;

CREATE TABLE "sideshift_swap" (
    "id" UUID NOT NULL PRIMARY KEY,
    "workspace_id" UUID NOT NULL,
    "root_execution" UUID NOT NULL,
    "step_id" VARCHAR(100) NOT NULL,
    "iteration" INTEGER NOT NULL,
    "created_at" TIMESTAMP NOT NULL,
    FOREIGN KEY ("workspace_id") REFERENCES "workspace" ("id") ON DELETE CASCADE,
    CONSTRAINT "chk_sideshift_swap_iteration" CHECK (iteration >= 0)
);
CREATE UNIQUE INDEX "sideshift_swap_root_execution_step_id_iteration" ON "sideshift_swap" ("root_execution", "step_id", "iteration");
CREATE INDEX sideshift_swap_workspace_id ON sideshift_swap USING btree (workspace_id);

ALTER TABLE "sideshift_order" ADD COLUMN "swap_id" UUID;
ALTER TABLE "sideshift_order" ADD CONSTRAINT "sideshift_order_swap_id_fkey" FOREIGN KEY (swap_id) REFERENCES sideshift_swap(id);
CREATE INDEX sideshift_order_swap_id ON sideshift_order USING btree (swap_id);

-- Existing orders: the iteration is the last ":" part of the external id before any "/r<n>".
CREATE TEMPORARY TABLE order_swap ON COMMIT DROP AS
SELECT o.id AS order_id, o.workspace_id, COALESCE(e.lineage_root, e.id) AS root, o.step_id,
       CAST(regexp_replace(split_part(o.external_id, '/', 1), '^.*:', '') AS INTEGER) AS iteration,
       o.created_at
FROM sideshift_order o JOIN execution e ON e.id = o.execution_id
WHERE o.step_id IS NOT NULL;

INSERT INTO sideshift_swap (id, workspace_id, root_execution, step_id, iteration, created_at)
SELECT gen_random_uuid(), MIN(workspace_id::text)::uuid, root, step_id, iteration, MIN(created_at)
FROM order_swap
GROUP BY root, step_id, iteration;

UPDATE sideshift_order SET swap_id = s.id
FROM order_swap os JOIN sideshift_swap s
    ON s.root_execution = os.root AND s.step_id = os.step_id AND s.iteration = os.iteration
WHERE sideshift_order.id = os.order_id;
