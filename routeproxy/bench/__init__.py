"""``routeproxy bench``: the benchmark, its load generator, scenarios and process helpers (not on the request path)."""
