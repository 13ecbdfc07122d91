"""LMDB key-value storage behind the interface py-evm expects of an atomic database."""

from ogpu_node.db.lmdb_store import DatabaseClosed, DatabaseLocked, LMDBStore, NoWriteSession, StoreFull

__all__ = ["DatabaseClosed", "DatabaseLocked", "LMDBStore", "NoWriteSession", "StoreFull"]
