"""Helpers shared by the tests: real servers and processes on loopback, upstreams, ports and polling."""
