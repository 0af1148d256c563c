-- 0011_workspace_tools: a workspace's choice of which registry tools are enabled (issue 15,
-- item 1). Tools are declared in code, so a row holds only the choice, keyed by the tool's
-- name; no row means enabled (existing workspaces keep every tool). `PUT /tools/{name}`
-- writes it.

CREATE TABLE "workspace_tool" (
    "id" UUID NOT NULL PRIMARY KEY,
    "workspace_id" UUID NOT NULL,
    "tool_name" VARCHAR(150) NOT NULL,
    "enabled" BOOLEAN NOT NULL,
    "updated_at" TIMESTAMP NOT NULL,
    FOREIGN KEY ("workspace_id") REFERENCES "workspace" ("id") ON DELETE CASCADE
);
CREATE UNIQUE INDEX "workspace_tool_workspace_id_tool_name" ON "workspace_tool" ("workspace_id", "tool_name");
