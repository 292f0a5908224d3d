"""Audit store: per-stage, per-site records of where writes went and when (optional)."""

from multiactive.audit.base import STAGES, Auditor, AuditRecord, AuditStore, Stage
from multiactive.audit.memory import MemoryAuditStore
from multiactive.audit.sqlite import SqliteAuditStore

__all__ = [
    "STAGES",
    "AuditRecord",
    "AuditStore",
    "Auditor",
    "MemoryAuditStore",
    "SqliteAuditStore",
    "Stage",
]
