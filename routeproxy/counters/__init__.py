"""Counters: the store interface, the in-memory and Redis stores, the Redis key layout, what is counted (stats) and
the Prometheus series."""
