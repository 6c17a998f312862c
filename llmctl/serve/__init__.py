"""Serving a model: an OpenAI-compatible HTTP API over a continuous-batching engine, and a terminal chat.

`engine` runs the model (one thread, a slot per running sequence); `protocol` holds the request
bodies and error JSON; `app` the routes; `chat` the interactive chat. `llmctl serve` and
`llmctl chat` (llmctl/cli/serve.py) start them; docs/serve.md describes the API.
"""
