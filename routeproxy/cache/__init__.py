"""The response cache: keys, stores, replay and coalescing (see the cache page of the docs)."""
