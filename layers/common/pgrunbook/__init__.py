"""pgrunbook: a Postgres operations runbook as automation."""

__version__ = "0.1.0"
