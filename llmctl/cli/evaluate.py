"""Commands: llmctl eval (issue 7). Registered on the shared app by importing this module."""
