"""Fleet manager: ingest, presence, signed lists, dashboard."""
