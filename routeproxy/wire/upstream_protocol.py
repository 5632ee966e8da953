"""aiohttp's connection protocol and body buffer, adjusted for a relay: the wire guarantees the hop needs and the
per-chunk costs it does not (upstream.py owns the pool and the requests; this module only what runs per read)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage
from aiohttp.streams import StreamReader

_HEAD_END = b"\r\n\r\n"


class _RelayReader(StreamReader):
    """aiohttp's body buffer, cheaper per HTTP chunk for a relay that only ever reads what has arrived (``readany``).

    aiohttp's parser calls three Python methods per HTTP chunk of a chunked body, and ``readany`` hands back each
    buffered chunk through its own bookkeeping (and a ``resume_reading`` call each): about 8 k instructions per
    chunk, a third of a 20-event stream's cost. The relay never reads by HTTP chunk, so the chunk boundaries are
    not tracked, and ``readany`` takes the whole buffer in one step. Flow control is aiohttp's: reading pauses past
    the high-water mark and resumes once the buffer is taken.
    """

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        if data:
            self._size += len(data)
            self.total_bytes += len(data)
            self._buffer.append(data)
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                if not waiter.done():
                    waiter.set_result(None)
            if self._size > self._high_water:
                self._protocol.pause_reading()
        return False

    def begin_http_chunk_receiving(self) -> None:
        """Chunk boundaries are not kept: the relay reads whatever has arrived."""

    def end_http_chunk_receiving(self) -> None:
        """Chunk boundaries are not kept: the relay reads whatever has arrived."""

    async def readany(self) -> bytes:
        if self._exception is not None:
            raise self._exception
        buffer = self._buffer
        while not buffer and not self._eof:
            await self._wait("readany")
        if not buffer:
            return b""
        self._timer.assert_timeout()
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        if self._buffer_offset:
            data = data[self._buffer_offset :]
            self._buffer_offset = 0
        buffer.clear()
        paused = self._size > self._high_water  # feed_data paused reading at this size
        self._size = 0
        self._cursor += len(data)
        if paused:
            self._protocol.resume_reading()
        return data


class _GuardedProtocol(ResponseHandler):
    """aiohttp's connection protocol, with three guarantees the hop needs that aiohttp does not give on its own:

    - bytes after a Content-Length body are dropped and the connection closed (aiohttp's parser reads them as the
      next response, and fails the whole exchange when they are not one);
    - bytes arriving while no request waits close the connection (aiohttp would keep a stray response there as the
      answer to the next request sent on it);
    - a reset before the end of a body delimited by the connection's close fails the body (aiohttp takes any close
      as the end of such a body, so a truncated answer would pass as complete).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float | None) -> None:
        super().__init__(loop)
        self._idle_timeout = idle_timeout
        self._awaiting = False  # a request was sent and its final response has not ended
        self._in_head = False  # the final response's head is still to come
        self._head_tail = b""  # the last bytes of an unfinished head, to find its end across reads
        self._body_left: int | None = None  # bytes still to come of a Content-Length body

    def set_response_params(self, **options: Any) -> None:
        self._awaiting, self._in_head, self._head_tail, self._body_left = True, True, b"", None
        super().set_response_params(**options)

    def data_received(self, data: bytes) -> None:
        if not data:
            # aiohttp resumes a parser it paused (its body buffer was full) with an empty read: the bytes it kept
            # back, the end of a body included, are parsed now. Dropping this call left such a body unfinished
            # until the upstream closed the connection.
            super().data_received(data)
            return
        if not self._awaiting:
            if data:  # an upstream writing out of turn: nothing it says can be trusted as the next answer
                self._should_close = True
                if self.transport is not None:
                    self.transport.close()
            return
        while data:
            if self._body_left is not None:
                body, extra = data[: self._body_left], data[self._body_left :]
                self._body_left -= len(body)
                if extra:
                    self._should_close = True  # dropped with the connection
                if body:
                    super().data_received(body)
                return
            if not self._in_head:  # a chunked or close-delimited body: aiohttp's parser finds its end
                super().data_received(data)
                return
            tail = self._head_tail
            end = (tail + data).find(_HEAD_END) - len(tail) if tail else data.find(_HEAD_END)
            if end < -len(tail):
                self._head_tail = (tail + data)[-3:]
                super().data_received(data)
                return
            self._head_tail = b""
            head, data = data[: end + 4], data[end + 4 :]
            super().data_received(head)  # the parser hands the message to feed_data, which notes its length

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        message, payload = data
        if type(payload) is StreamReader:
            payload.__class__ = _RelayReader  # same slots; the parser has not fed it a byte yet (see data_received)
        if not 100 <= message.code < 200:  # interim responses (100 Continue) are followed by the real one
            self._in_head = False
            # aiohttp's read timeout (sock_read) was the first-byte timeout until now; between body chunks it is
            # the idle timeout. One timer, re-armed by aiohttp on each read: no asyncio.timeout per chunk.
            if self.read_timeout != self._idle_timeout:
                self.read_timeout = self._idle_timeout
                self.start_timeout()
            length = message.headers.get("Content-Length", "")
            if not message.chunked and length.isdigit():
                self._body_left = int(length) if payload.total_bytes == 0 else None
            payload.on_eof(self._response_ended)
        super().feed_data(data, size)

    def _response_ended(self) -> None:
        self._awaiting = False
        self._body_left = 0  # anything after the end of this response is dropped

    def connection_lost(self, exc: BaseException | None) -> None:
        payload = self._payload
        if exc is not None and payload is not None and not payload.is_eof():
            payload.set_exception(aiohttp.ClientPayloadError(f"the connection was reset mid-body ({exc!r})"))
        super().connection_lost(exc)


class Connector(aiohttp.TCPConnector):
    """aiohttp's connector, opening connections with the guarded protocol below."""

    def __init__(self, idle_timeout: float | None, **options: Any) -> None:
        super().__init__(**options)
        factory = functools.partial(_GuardedProtocol, loop=self._loop, idle_timeout=idle_timeout)
        self._factory = cast("functools.partial[ResponseHandler]", factory)
