"""The lake: tables, cubes and their atomic, idempotent writes."""
