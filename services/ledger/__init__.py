"""One bank's event-sourced ledger: accounts, local exchanges, holds and its HTTP API."""

# The eventsourcing application's name: its PostgreSQL tables are named after it.
APPLICATION_NAME = "Ledger"
