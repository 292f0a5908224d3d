"""The database layer: DB handlers applied exactly once with the DB watermark, the writer role
and its epoch, and the MariaDB replication commands (status, switchover, failover).

See docs/database.md."""
