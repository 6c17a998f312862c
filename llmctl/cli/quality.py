"""Commands: llmctl quality (issue 3). Registered on the shared app by importing this module."""
