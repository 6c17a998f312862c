"""URL blocklist: drop documents whose URL's host is a listed domain or one of its subdomains.

The blocklist is a text file of domains, one a line (`example.com`; a leading `*.` or a trailing
`.` is ignored; `#` starts a comment, blank lines are skipped), matched case-insensitively:
`example.com` blocks `example.com` and `news.example.com`, not `notexample.com`. A document
without a URL, or with one that has no host, is kept. Dropped documents get reason
`url.blocklist`, detail the listed domain that matched. Off unless `url.blocklist` is set.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

from llmctl.data.document import DETAIL_KEY, Document
from llmctl.errors import UsageError
from llmctl.store import fs
from llmctl.store.integrity import file_sha256


@dataclass
class UrlConfig:
    blocklist: str | None = None  # a file of domains to drop, one a line; None = step off

    @property
    def enabled(self) -> bool:
        return self.blocklist is not None


def read_blocklist(path: str) -> frozenset[str]:
    """The domains of a blocklist file, lowercased, without comments, `*.` and trailing dots."""
    try:
        with fs.open_binary(path) as f:
            lines = f.read().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"url.blocklist {path}: cannot read it ({e})") from None
    domains = (ln.split("#", 1)[0].strip().lower().removeprefix("*.").rstrip(".") for ln in lines)
    return frozenset(d for d in domains if d)


def blocklist_lineage(cfg: UrlConfig) -> dict[str, str]:
    """The blocklist file as an input of the output: editing it makes a new output."""
    return {
        "path": fs.display(fs.to_path(cfg.blocklist)),
        "stage": "url.blocklist",
        "fingerprint": file_sha256(cfg.blocklist),
    }


def host(url: str | None) -> str | None:
    """The lowercased host of `url`, or None when it has none (or does not parse)."""
    if not url:
        return None
    try:
        return (urlsplit(url.strip()).hostname or "").rstrip(".") or None
    except ValueError:
        return None


class UrlFilter:
    """The `url` step: drops documents whose host is in the blocklist or under a listed domain."""

    name = "url"

    def __init__(self, cfg: UrlConfig):
        self.cfg = cfg
        self.domains = read_blocklist(cfg.blocklist)  # type: ignore[arg-type]

    def blocked_by(self, url: str | None) -> str | None:
        """The listed domain that `url`'s host is or is under, else None."""
        h = host(url)
        if h is None:
            return None
        labels = h.split(".")
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            if suffix in self.domains:
                return suffix
        return None

    def __call__(self, doc: Document, stats: Counter[str]) -> str | None:
        domain = self.blocked_by(doc.url)
        if domain is None:
            return None
        doc.meta[DETAIL_KEY] = domain
        return "url.blocklist"
