"""PII scrubbing: e-mail addresses, phone numbers and IP addresses are replaced by placeholders.

The step never drops a document. It sets `doc.meta["pii_email"]`, `["pii_phone"]`, `["pii_ip"]`
(counts of replacements; left unset when that kind is switched off) and adds the same counts to
`stats["pii.email"]`, `["pii.phone"]`, `["pii.ip"]`. The patterns (written for this project) aim
at precision as much as recall; passes run in the order e-mail, IPv6, IPv4, phone, so a later
pass never sees digits that an earlier one replaced.

- E-mail: `local@domain.tld` with an ASCII local part (no leading, trailing or doubled dot) and a
  2-24 letter TLD; image/style file names such as `logo@2x.png` are not e-mails.
- IPv4: a dotted quad not glued to a word character or another dot-number ("v1.2.3.4" and
  "1.2.3.4.5" are versions), valid for `ipaddress` (no octet over 255, no leading zeros), and not
  preceded by a word that makes it a version or a numbered part ("version", "v.", "Python",
  "release", "build", "firmware", "kernel", "section", "chapter", "§", "figure", "table",
  "step", "rule", "article", "clause", "item").
- IPv6: colon-separated hex groups (a trailing dotted quad allowed), valid for `ipaddress`, that
  contain at least one digit and either 3+ non-empty groups or a group of 3+ hex characters. This
  keeps "fe80::1" and "2001:db8::1" but leaves "::", "a[1::2]", "10::20", "std::vector",
  "Add::Bad" and times like "12:30:45" (not valid IPv6) alone.
- Phone, North American: "(555) 123-4567", "555-123-4567", "555.123.4567" (the same separator
  twice), optionally with a "1-" trunk prefix. Phone, international: a "+", a country code and
  groups separated by single spaces, dots or dashes ("+44 20 7946 0958", "+49 30 1234567",
  "+1 555 123 4567", "+44 (0)20 7946 0958"). The digits after "+" must start with an E.164
  country code that is not cut by a separator ("+5 2024-05-23" is not a phone: no code "5"),
  and there must be 8 to 15 digits in all (E.164 allows 15), exactly 11 after +1 or +7. With `bare_phones`
  (off by default, `--pii-bare-phones`), a bare 10-digit number whose area code and exchange start
  with 2-9 (NANP) is a phone too ("call 5551234567"). Otherwise numbers
  without a "+" or separators (bare 10-digit numbers, ISBNs, years "1990-2000", prices
  "$1,299.99", dates "2024-05-23", "05/23/2024") are never phones; neither are 3-3-4 groups
  separated by spaces only ("555 123 4567"), which look like tables of numbers.
Known misses and over-matches: a trailing group after a phone ("+44 20 7946 0958 12 cats") is
swallowed when the total stays within 15 digits; "1.0.0.0 is the first release" is an IP.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from llmctl.data.document import Document

EMAIL_RE = re.compile(
    r"(?<![\w.%+-])"
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*"
    r"@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?P<tld>[A-Za-z]{2,24})"
    r"(?![\w-]|\.[A-Za-z0-9])"
)
_FILE_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "css", "js", "tif", "tiff"})

IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_VERSION_CONTEXT = re.compile(
    r"(?:\b(?:version|ver|v|python|release|build|firmware|kernel|section|sec|chapter|ch"
    r"|figure|fig|table|step|rule|article|clause|item)\.?|§)\s*$",
    re.IGNORECASE,
)

IPV6_RE = re.compile(
    r"(?<![\w:.])"
    r"(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4})"
    r"(?![\w:]|\.\w)"
)

PHONE_NA_RE = re.compile(
    r"(?<![\w+./-])"
    r"(?:1[ .-])?"
    r"(?:\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}(?P<sep>[.-])\d{3}(?P=sep)\d{4})"
    r"(?!\w|[.-]\d)"
)
# E.164 country codes: 1 and 7; these two-digit codes; three-digit codes under these prefixes.
_CC2 = frozenset(
    "20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 "
    "60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98".split()
)
_CC3_PREFIXES = frozenset("21 22 23 24 25 26 29 35 37 38 42 50 59 67 68 69 80 85 87 88 96 97 99".split())
PHONE_INTL_RE = re.compile(
    r"(?<![\w+])"
    r"\+[1-9]\d{0,2}"
    r"(?:[ .-]?\(\d{1,4}\))?"
    r"[ .-]?\d{1,12}"
    r"(?:[ .-]\d{1,12}){0,5}"
    r"(?!\w|[.-]?\d)"
)


# A bare 10-digit North American number (NANP: area code and exchange start with 2-9), not part of
# a longer digit run, a decimal, a date or an id ("order 2125551234-A" stays: glued to "-A").
PHONE_BARE_RE = re.compile(r"(?<![\w+./-])[2-9]\d{2}[2-9]\d{6}(?!\w|[.,/-]\w)")


@dataclass
class PIIConfig:
    enabled: bool = True
    emails: bool = True
    phones: bool = True
    ips: bool = True
    email_placeholder: str = "<EMAIL>"
    phone_placeholder: str = "<PHONE>"
    ip_placeholder: str = "<IP>"
    bare_phones: bool = False  # also bare 10-digit North American numbers ("5551234567"): off, like Presidio's default


def _valid_email(m: re.Match[str], text: str) -> bool:
    return m.group("tld").lower() not in _FILE_TLDS


def _valid_ipv4(m: re.Match[str], text: str) -> bool:
    try:
        ipaddress.IPv4Address(m.group())
    except ValueError:
        return False
    return not _VERSION_CONTEXT.search(text, max(0, m.start() - 24), m.start())


def _valid_ipv6(m: re.Match[str], text: str) -> bool:
    cand = m.group()
    if not any(c.isdigit() for c in cand):
        return False
    try:
        ipaddress.IPv6Address(cand)
    except ValueError:
        return False
    groups = [g for g in re.split(r"[:.]", cand) if g]
    return len(groups) >= 3 or any(len(g) >= 3 for g in groups)


def country_code_length(digits: str) -> int:
    """Length of the E.164 country code `digits` starts with (codes are prefix-free), 0 if none."""
    if digits[:1] in ("1", "7"):
        return 1
    if digits[:2] in _CC2:
        return 2
    if digits[:2] in _CC3_PREFIXES and len(digits) >= 3:
        return 3
    return 0


def _valid_phone_intl(m: re.Match[str], text: str) -> bool:
    number = m.group()
    digits = "".join(c for c in number if c.isdigit())
    cc = country_code_length(digits)
    first_run = len(re.match(r"\+(\d+)", number).group(1))
    if cc == 0 or first_run < cc:  # "+5 2024-05-23": 5 is no country code
        return False
    if cc == 1:  # +1 (North America) and +7 (Russia, Kazakhstan): 10 digits after the code
        return len(digits) == 11
    return 8 <= len(digits) <= 15


def _valid_any(m: re.Match[str], text: str) -> bool:
    return True


def _scrub(
    text: str, pattern: re.Pattern[str], valid: Callable[[re.Match[str], str], bool], placeholder: str
) -> tuple[str, int]:
    count = 0

    def repl(m: re.Match[str]) -> str:
        nonlocal count
        if valid(m, text):
            count += 1
            return placeholder
        return m.group()

    return pattern.sub(repl, text), count


class PIIScrubber:
    """Replace e-mails, phone numbers and IPs by placeholders; never drops a document."""

    name = "pii"

    def __init__(self, cfg: PIIConfig | None = None):
        self.cfg = cfg or PIIConfig()

    def scrub(self, text: str) -> tuple[str, dict[str, int]]:
        """The scrubbed text and the number of replacements per enabled kind."""
        cfg = self.cfg
        counts: dict[str, int] = {}
        if cfg.emails:
            n = 0
            if "@" in text:
                text, n = _scrub(text, EMAIL_RE, _valid_email, cfg.email_placeholder)
            counts["email"] = n
        if cfg.ips:
            n6 = n4 = 0
            if "::" in text or text.count(":") >= 7:
                text, n6 = _scrub(text, IPV6_RE, _valid_ipv6, cfg.ip_placeholder)
            if "." in text:
                text, n4 = _scrub(text, IPV4_RE, _valid_ipv4, cfg.ip_placeholder)
            counts["ip"] = n6 + n4
        if cfg.phones:
            n1 = n2 = 0
            if "+" in text:
                text, n1 = _scrub(text, PHONE_INTL_RE, _valid_phone_intl, cfg.phone_placeholder)
            text, n2 = _scrub(text, PHONE_NA_RE, _valid_any, cfg.phone_placeholder)
            n3 = 0
            if cfg.bare_phones:
                text, n3 = _scrub(text, PHONE_BARE_RE, _valid_any, cfg.phone_placeholder)
            counts["phone"] = n1 + n2 + n3
        return text, counts

    def __call__(self, doc: Document, stats: Counter[str]) -> str | None:
        if not self.cfg.enabled:
            return None
        doc.text, counts = self.scrub(doc.text)
        for kind, n in counts.items():
            doc.meta[f"pii_{kind}"] = n
            if n:
                stats[f"pii.{kind}"] += n
        return None
