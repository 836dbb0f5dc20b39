"""Audits by replay: every balance rebuilt from a log's first event, every invariant checked."""
