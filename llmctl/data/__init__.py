"""Data stages: extraction, rule filters, PII scrub, dedup, quality classifier."""
