"""The timebank-federation services: one ledger per bank, and (later) the clearing house."""
