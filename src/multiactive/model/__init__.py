"""The pure model: messages, batches, ids, clock, partitions, topology. No I/O here."""

from multiactive.model.batch import RecordBatch, build_batch, parse_batch, split_batches
from multiactive.model.clock import HybridClock
from multiactive.model.ids import IdGenerator
from multiactive.model.message import Message, Position, StreamId
from multiactive.model.partition import partition_for
from multiactive.model.topology import LinkConfig, SiteConfig, Topology, load_topology

__all__ = [
    "HybridClock",
    "IdGenerator",
    "LinkConfig",
    "Message",
    "Position",
    "RecordBatch",
    "SiteConfig",
    "StreamId",
    "Topology",
    "build_batch",
    "load_topology",
    "parse_batch",
    "partition_for",
    "split_batches",
]
