"""Commands: llmctl pretrain, generate, export, plot (issue 5). Registered on the shared app by importing this module."""
