"""multiactive: every datacenter writable; every write journaled, shipped and applied everywhere."""

from multiactive.errors import (
    ConfigError,
    ConnectionLost,
    DecodeError,
    GapError,
    JournalError,
    MultiactiveError,
    PayloadTooLarge,
    ProtocolError,
    RejectedError,
    UnknownSiteError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConnectionLost",
    "DecodeError",
    "GapError",
    "JournalError",
    "MultiactiveError",
    "PayloadTooLarge",
    "ProtocolError",
    "RejectedError",
    "UnknownSiteError",
    "__version__",
]
