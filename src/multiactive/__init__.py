"""multiactive: every datacenter writable; every write journaled, shipped and applied everywhere."""

from multiactive.client import Ack, Client
from multiactive.errors import (
    AuthenticationError,
    BatchRejected,
    ConfigError,
    ConnectionLost,
    DatabaseUnavailable,
    DecodeError,
    JournalError,
    MultiactiveError,
    OutcomeUnknown,
    PayloadTooLarge,
    ProtocolError,
    RejectedError,
    RoutingRefused,
    UnknownSiteError,
)
from multiactive.model import Message, StreamId, Topology, load_topology
from multiactive.reads import Cache, Cached, DbReader, Loaded, open_cache
from multiactive.replication.handlers import Delivery, HandlerRegistry
from multiactive.state import Entry

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "AuthenticationError",
    "BatchRejected",
    "Cache",
    "Cached",
    "Client",
    "ConfigError",
    "ConnectionLost",
    "DatabaseUnavailable",
    "DbReader",
    "DecodeError",
    "Delivery",
    "Entry",
    "HandlerRegistry",
    "JournalError",
    "Loaded",
    "Message",
    "MultiactiveError",
    "OutcomeUnknown",
    "PayloadTooLarge",
    "ProtocolError",
    "RejectedError",
    "RoutingRefused",
    "StreamId",
    "Topology",
    "UnknownSiteError",
    "__version__",
    "load_topology",
    "open_cache",
]
