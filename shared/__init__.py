"""What crosses the wire between banks and the clearing house, and how amounts are shown."""
