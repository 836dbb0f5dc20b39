"""Running a whole federation on one machine: a real NATS server and every service."""
