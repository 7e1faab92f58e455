"""DuckDB on a lake: views over its tables and the archive, for SQL from Python or `mstlake sql`."""

from mstlake.query.lake import open_lake

__all__ = ["open_lake"]
