"""The wire: what crosses a socket. Request admission, client keys and parsing on the client's side; the upstream
client (aiohttp, behind one error-mapping boundary), SSE framing and the relay of one exchange on the upstream's."""
