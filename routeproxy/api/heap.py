"""The serving process's garbage collector, set once the app is built.

CPython's defaults run a young-generation collection every 700 net new container objects (lists, dicts,
coroutines, futures). A proxy with tens of requests in flight keeps thousands of such objects alive at any moment,
so under load it collected about every ninth request, and each pass moved the in-flight requests' objects into
the older generations, whose passes walk the whole heap: modules, rule sets, prometheus series, the clients'
pools. Measured with ``python -m routeproxy.bench.gcstats`` (README, performance): at c=32, 108 young, 9.8 middle
and 0.9 full passes per 1,000 requests, 17.8 % of the proxy's CPU, while finding almost nothing to collect (a
request's objects are freed by reference counting as it ends).

``settle_heap`` freezes what exists when the app is built (``gc.freeze``: the objects that live as long as the
process, which the older passes no longer walk) and raises the young generation's threshold tenfold: 0.5 passes
per 1,000 requests, 0.3 % of the CPU. Cycles are still collected; the extra memory is at most a few thousand
small objects.
"""

from __future__ import annotations

import gc

# (young, middle, old): CPython's default is (700, 10, 10).
THRESHOLDS = (7000, 10, 10)


def settle_heap() -> None:
    """Collect once, freeze the survivors and raise the young generation's threshold (once the app is built)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
