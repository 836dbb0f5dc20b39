"""The clearing house: member-bank directory, coordinator of cross-bank transfers, positions."""

# The eventsourcing application's name: its PostgreSQL tables are named after it.
APPLICATION_NAME = "Clearing"
