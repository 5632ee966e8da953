"""The simulated upstream with its dialects, and a uvicorn server in a thread (not on the request path)."""
