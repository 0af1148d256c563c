"""What a principal may do through the management API and the CLI: access, workspaces, keys,
workflows, executions, signals, dead-letter replay, effects, audit, paging, quotas.
"""
