"""URL rules: drop documents whose URL is on a blocklist or holds a banned word, unless allow-listed.

A list file (`blocklist`, `allowlist`: one or more each) holds one entry a line (`#` starts a
comment, blank lines are skipped), matched case-insensitively. An entry without `/` is a domain
(a leading `*.` or a trailing `.` is ignored): `example.com` matches `example.com` and
`news.example.com`, not `notexample.com`. An entry with `/` is a URL, matched without its scheme,
`www.`, fragment and trailing `/` (`example.com/spam` matches `https://www.example.com/spam/`).
`banned_words` are matched against the URL's words (its lowercased runs of letters and digits):
`casino` matches `https://best-casino.example/`, not `https://casinos.example/`.

A URL on an allow-list is kept whatever else matches. Otherwise a blocklisted one is dropped
with reason `url.blocklist` (detail: the matching entry), then one with a banned word with
`url.banned_word` (detail: the word). A document without a URL, or with one without a host, is
kept. The step is on when a blocklist or a banned word is set; the filter runs it on each record
as it is read, before extraction, so a dropped page costs no extraction.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from llmctl.data.document import DETAIL_KEY, Document
from llmctl.errors import UsageError
from llmctl.store import fs
from llmctl.store.integrity import file_sha256

_URL_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class UrlConfig:
    blocklist: list[str] = field(default_factory=list)  # files of domains/URLs to drop; [] and no banned words = off
    allowlist: list[str] = field(default_factory=list)  # files of domains/URLs always kept
    banned_words: list[str] = field(default_factory=list)  # words that drop a URL holding one

    def __post_init__(self) -> None:
        if isinstance(self.blocklist, str):  # one file, as a string (`cfg.url.blocklist = "x.txt"`)
            self.blocklist = [self.blocklist]
        if isinstance(self.allowlist, str):
            self.allowlist = [self.allowlist]

    @property
    def enabled(self) -> bool:
        return bool(_files(self.blocklist) or self.banned_words)


def _files(v: str | list[str] | None) -> list[str]:
    return [v] if isinstance(v, str) else list(v or [])


def read_list(path: str, what: str = "url.blocklist") -> tuple[frozenset[str], frozenset[str]]:
    """(domains, URLs) of a list file: lowercased, without comments; domains without `*.` and trailing dots."""
    try:
        with fs.open_binary(path) as f:
            lines = f.read().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {path}: cannot read it ({e})") from None
    entries = [ln.split("#", 1)[0].strip().lower() for ln in lines]
    domains = frozenset(e.removeprefix("*.").rstrip(".") for e in entries if e and "/" not in e)
    urls = frozenset(u for e in entries if e and "/" in e if (u := url_key(e)))
    if not domains and not urls:
        raise UsageError(f"{what} {path}: has no domains or URLs")
    return domains - {""}, urls


def read_blocklist(path: str) -> frozenset[str]:
    """The domains of a blocklist file."""
    return read_list(path)[0]


def blocklist_lineage(cfg: UrlConfig) -> list[dict[str, str]]:
    """The list files as inputs of the output: editing one makes a new output."""
    return [
        {"path": fs.display(fs.to_path(p)), "stage": f"url.{what}", "fingerprint": file_sha256(p)}
        for what, files in (("blocklist", cfg.blocklist), ("allowlist", cfg.allowlist))
        for p in _files(files)
    ]


def host(url: str | None) -> str | None:
    """The lowercased host of `url`, or None when it has none (or does not parse)."""
    if not url:
        return None
    try:
        return (urlsplit(url.strip()).hostname or "").rstrip(".") or None
    except ValueError:
        return None


def url_key(url: str) -> str | None:
    """`url` without scheme, `www.`, fragment and trailing `/`, host lowercased: how URL entries match."""
    u = url.strip()
    if "://" not in u:
        u = "http://" + u
    try:
        parts = urlsplit(u)
        h = (parts.hostname or "").rstrip(".").removeprefix("www.")
    except ValueError:
        return None
    if not h:
        return None
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    return (h + rest).rstrip("/")


def _under(h: str, domains: frozenset[str]) -> str | None:
    labels = h.split(".")
    for i in range(len(labels)):
        suffix = ".".join(labels[i:])
        if suffix in domains:
            return suffix
    return None


class UrlFilter:
    """The `url` step: allow-list first, then blocklist domains and URLs, then banned words."""

    name = "url"

    def __init__(self, cfg: UrlConfig):
        self.cfg = cfg
        self.domains, self.urls = self._load(_files(cfg.blocklist), "url.blocklist")
        self.allow_domains, self.allow_urls = self._load(_files(cfg.allowlist), "url.allowlist")
        self.banned = frozenset(w.strip().lower() for w in cfg.banned_words if w.strip())

    @staticmethod
    def _load(paths: list[str], what: str) -> tuple[frozenset[str], frozenset[str]]:
        domains: set[str] = set()
        urls: set[str] = set()
        for p in paths:
            d, u = read_list(p, what)
            domains |= d
            urls |= u
        return frozenset(domains), frozenset(urls)

    def allowed(self, url: str | None) -> bool:
        h = host(url)
        if h is None or not (self.allow_domains or self.allow_urls):
            return False
        return _under(h, self.allow_domains) is not None or url_key(url or "") in self.allow_urls

    def blocked_by(self, url: str | None) -> str | None:
        """The listed domain or URL that `url` is, or is under, else None (allow-lists not applied)."""
        h = host(url)
        if h is None:
            return None
        domain = _under(h, self.domains)
        if domain is not None:
            return domain
        if self.urls and (key := url_key(url or "")) in self.urls:
            return key
        return None

    def banned_word(self, url: str | None) -> str | None:
        if not self.banned or not url:
            return None
        return next((w for w in _URL_WORD.findall(url.lower()) if w in self.banned), None)

    def __call__(self, doc: Document, stats: Counter[str]) -> str | None:
        if host(doc.url) is None or self.allowed(doc.url):
            return None
        entry = self.blocked_by(doc.url)
        if entry is not None:
            doc.meta[DETAIL_KEY] = entry
            return "url.blocklist"
        word = self.banned_word(doc.url)
        if word is not None:
            doc.meta[DETAIL_KEY] = word
            return "url.banned_word"
        return None
