"""llmctl: from a raw web crawl to an evaluated, aligned language model."""

__version__ = "0.1.0"
