"""Where SSE events end: every pair of line ends (CRLF, LF, CR) is an empty line, and "\\r\\n" is one line end."""

from __future__ import annotations

import pytest

from routeproxy.wire.sse import EVENT_ENDS, last_event_end


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"data: 1\n\n", 9),
        (b"data: 1\r\n\r\n", 11),
        (b"data: 1\r\r", 9),
        (b"data: 1\n\r\n", 10),  # LF, then CRLF
        (b"data: 1\r\n\n", 10),  # CRLF, then LF
        (b"data: 1\r\r\n", 10),  # CR, then CRLF
        (b"data: 1\n\ndata: 2\n", 9),  # the second event is not complete
        (b"data: 1\r\n", 0),  # one line end (CRLF) is not an empty line
        (b"data: 1\ndata: 2\r\ndata: 3", 0),
        (b"", 0),
    ],
)
def test_last_event_end(data: bytes, end: int) -> None:
    assert last_event_end(data) == end
    if end == len(data) and data:
        assert data.endswith(EVENT_ENDS)  # the relay's fast path agrees
    else:
        assert not data.endswith(EVENT_ENDS)
