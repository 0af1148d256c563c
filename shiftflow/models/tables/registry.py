"""Every table, in dependency order, and the SQLite dev-mode schema builder.

``ALL_MODELS`` is the single list the migration generator, the migration/model
contract test and dev mode work from: a model missing here has no table anywhere.
"""

from __future__ import annotations

import peewee

from shiftflow.models.tables.artifacts import Artifact
from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.base import BaseModel
from shiftflow.models.tables.dead_letters import DeadLetter
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.integrations import Connection, Integration, IntegrationTrigger
from shiftflow.models.tables.llm_calls import LlmCall
from shiftflow.models.tables.notifications import Notification
from shiftflow.models.tables.patterns import FeedbackItem, PatternRun, PatternSession, PatternWorkspace
from shiftflow.models.tables.polling_cursors import PollingCursor
from shiftflow.models.tables.price_cache import PriceCache
from shiftflow.models.tables.prompts import Prompt, PromptValidation, PromptVersion
from shiftflow.models.tables.queue_jobs import QueueJob
from shiftflow.models.tables.schedules import Schedule
from shiftflow.models.tables.side_effects import SideEffect
from shiftflow.models.tables.sideshift_orders import SideShiftOrder, SideShiftSwap
from shiftflow.models.tables.templates import WorkflowTemplate
from shiftflow.models.tables.tenancy import ApiKey, User, Workspace, WorkspaceMember
from shiftflow.models.tables.timeline import TimelineEvent
from shiftflow.models.tables.tools import Tool, ToolExecution, WorkspaceTool
from shiftflow.models.tables.trigger_deliveries import TriggerDelivery
from shiftflow.models.tables.workflow_metrics import WorkflowMetrics
from shiftflow.models.tables.workflows import Webhook, Workflow, WorkflowVersion

#: Every model, each after the models it references (a unit test checks the order).
ALL_MODELS: list[type[BaseModel]] = [
    # Tenancy
    User,
    Workspace,
    WorkspaceMember,
    ApiKey,
    # Catalogues and connections
    Integration,
    IntegrationTrigger,
    Connection,
    WorkflowTemplate,
    Tool,
    PriceCache,
    # Workflows and their triggers
    Workflow,
    WorkflowVersion,
    Webhook,
    Schedule,
    PollingCursor,
    # Runs
    Execution,
    StepExecution,
    ToolExecution,
    WorkspaceTool,
    SideEffect,
    SideShiftSwap,
    SideShiftOrder,
    QueueJob,
    DeadLetter,
    TriggerDelivery,
    Artifact,
    # Prompts and LLM calls
    Prompt,
    PromptVersion,
    PromptValidation,
    LlmCall,
    # Reporting
    Notification,
    WorkflowMetrics,
    AuditLog,
    # Pattern workspaces and timelines
    PatternWorkspace,
    PatternSession,
    FeedbackItem,
    PatternRun,
    TimelineEvent,
]


def create_all(db: peewee.Database) -> None:
    """Create every table and index on ``db`` if missing (SQLite dev mode and unit tests).

    PostgreSQL databases are built by ``shiftflow.models.tables.migrations.upgrade`` instead,
    so that they carry a migration history. The models are bound to ``db`` only for
    the duration of the call; the kernel's proxy binding is left as it was.
    """
    with db.bind_ctx(ALL_MODELS, bind_refs=False, bind_backrefs=False):
        db.create_tables(ALL_MODELS, safe=True)


__all__ = ["ALL_MODELS", "create_all"]
