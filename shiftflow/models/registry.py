"""Every table, in dependency order, and the SQLite dev-mode schema builder.

``ALL_MODELS`` is the single list the migration generator, the migration/model
contract test and dev mode work from: a model missing here has no table anywhere.
"""

from __future__ import annotations

import peewee

from shiftflow.models.artifacts import Artifact
from shiftflow.models.audit import AuditLog
from shiftflow.models.base import BaseModel
from shiftflow.models.dead_letters import DeadLetter
from shiftflow.models.effects import SideEffect
from shiftflow.models.executions import Execution, StepExecution
from shiftflow.models.integrations import Connection, Integration, IntegrationTrigger
from shiftflow.models.llm_calls import LlmCall
from shiftflow.models.notifications import Notification
from shiftflow.models.patterns import FeedbackItem, PatternRun, PatternSession, PatternWorkspace
from shiftflow.models.polling import PollingCursor
from shiftflow.models.prices import PriceCache
from shiftflow.models.prompts import Prompt, PromptValidation, PromptVersion
from shiftflow.models.queue_jobs import QueueJob
from shiftflow.models.schedules import Schedule
from shiftflow.models.sideshift import SideShiftOrder, SideShiftSwap
from shiftflow.models.templates import WorkflowTemplate
from shiftflow.models.tenancy import ApiKey, User, Workspace, WorkspaceMember
from shiftflow.models.timeline import TimelineEvent
from shiftflow.models.tools import Tool, ToolExecution
from shiftflow.models.trigger_deliveries import TriggerDelivery
from shiftflow.models.workflow_metrics import WorkflowMetrics
from shiftflow.models.workflows import Webhook, Workflow, WorkflowVersion

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

    PostgreSQL databases are built by ``shiftflow.models.migrations.upgrade`` instead,
    so that they carry a migration history. The models are bound to ``db`` only for
    the duration of the call; the kernel's proxy binding is left as it was.
    """
    with db.bind_ctx(ALL_MODELS, bind_refs=False, bind_backrefs=False):
        db.create_tables(ALL_MODELS, safe=True)


__all__ = ["ALL_MODELS", "create_all"]
