"""Commands: llmctl tokenize (issue 4). Registered on the shared app by importing this module."""
