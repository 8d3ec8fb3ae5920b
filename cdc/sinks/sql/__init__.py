"""The SQL sink (PostgreSQL, MariaDB/MySQL, SQLite storefronts): see sink.py."""

from cdc.sinks.sql.sink import SqlSink

__all__ = ["SqlSink"]
