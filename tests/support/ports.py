"""Free loopback ports for the servers the tests start: the benchmark's own helper."""

from routeproxy.bench.procs import free_port

__all__ = ["free_port"]
