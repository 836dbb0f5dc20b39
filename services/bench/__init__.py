"""`timebank bench`: each throughput and latency figure measured beside a raw baseline."""
