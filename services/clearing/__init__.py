"""The clearing house: member-bank directory, coordinator of cross-bank transfers, positions."""
