"""The LangChain standard tests that do not run through the proxy here, and why (kept apart from the suite module so
that reading the list imports no LangChain)."""

NO_INTERNET = "fetches its media from wikimedia.org or w3.org; the test machines have no internet access"
SKIPS = {
    "test_image_inputs": NO_INTERNET,
    "test_image_tool_message": NO_INTERNET,
    "test_pdf_inputs": NO_INTERNET,
    "test_pdf_tool_message": NO_INTERNET,
    "test_audio_inputs": NO_INTERNET,
    "test_anthropic_inputs": NO_INTERNET,
    "test_stream_time": "replays a recorded VCR cassette of the provider's API; there is none for a local upstream",
}
