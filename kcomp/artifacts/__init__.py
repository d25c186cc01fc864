"""Readers, writers and validators of every file kcomp exchanges between commands."""

from kcomp.artifacts._atomic import atomic_write, atomic_write_bytes
from kcomp.artifacts._meta import SCHEMAS, check_meta, make_meta
from kcomp.artifacts.index import IndexTable, read_index, write_folds, write_index
from kcomp.artifacts.jsonfile import read_json, write_json
from kcomp.artifacts.tables import STDIO, read_table, require_columns, write_table

__all__ = [
    "SCHEMAS", "STDIO", "IndexTable", "atomic_write", "atomic_write_bytes", "check_meta", "make_meta",
    "read_index", "read_json", "read_table", "require_columns", "write_folds", "write_index", "write_json",
    "write_table",
]
