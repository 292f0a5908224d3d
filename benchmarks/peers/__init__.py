"""Peer systems measured beside multiactive by `benchmarks/compare.py` (issue 3).

Each module (`nats`, `rabbitmq`) exposes `run(rtt_ms, messages, rate, duration_s) -> dict`
with the same figures as `benchmarks/replication.py`, measured on this machine with the two
nodes of the peer joined by one link of our WAN emulator.
"""
