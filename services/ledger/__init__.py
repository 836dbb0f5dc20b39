"""One bank's event-sourced ledger: accounts, local exchanges, holds and its HTTP API."""
