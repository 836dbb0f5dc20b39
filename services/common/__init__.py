"""Building blocks every service uses: stores, idempotency, auth and HTTP problem details."""
