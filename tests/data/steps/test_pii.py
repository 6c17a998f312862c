"""PII scrubbing: what must be replaced (recall), what must be left alone (precision), counts.

The story sentence is real text from TinyStories (Eldan & Li 2023), taken from
/work/shared/data/tinystories/tinystories_valid_head.txt.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from llmctl.data.document import Document
from llmctl.data.steps.pii import PIIConfig, PIIScrubber

STORY = "Sue carefully lit the candle and put it on the table. Her mom was so happy to see the pretty candle."

# Things that look like PII to a loose regex and must stay as they are.
NOT_PII = [
    "We moved to Python 3.11.4 last week.",
    "Install v1.2.3.4 or later.",
    "Windows version 10.0.19041.1 ships with it.",
    "The router firmware version 2.1.0.5 fixed it.",
    "See section 1.2.3.4 of the manual.",
    "Released as 1.2.3.4.5 on Monday.",
    "The meeting is on 2024-05-23 at noon.",
    "Geboren am 23.05.2024 in Berlin.",
    "Due date: 05/23/2024.",
    "The race started at 12:30:45 sharp.",
    "Open 10:30 am to 5:45 pm, 7 days a week.",
    "It costs $1,299.99 plus tax.",
    "ISBN 978-3-16-148410-0 is on the back cover.",
    "ISBN 0-306-40615-2 is the old number.",
    "Order number 1234567890 has shipped.",
    "Card 4111 1111 1111 1111 is a test number.",
    "Pi is about 3.14159 and e is about 2.71828.",
    "The war lasted from 1990-2000, and 2019-2020-2021 were hard years.",
    "Read pages 123-456 tonight.",
    "Call 1-800-FLOWERS today.",
    "Use std::vector<int> and std::map in C++.",
    "The scope operator :: joins names.",
    "In numpy, a[::2] and x[1::2] take every other item; so does y[10::20].",
    "The Add::Bad method is deprecated.",
    "Its MAC address is 00:1A:2B:3C:4D:5E.",
    "Octets like 256.1.1.1 and 999.999.999.999 are not addresses.",
    "Leading zeros as in 192.168.01.1 are rejected.",
    "Retina images are named logo@2x.png and icon@3x.jpg.",
    "Follow @username on the site.",
    "Mail root@localhost on the box.",
    "It was +5 degrees and 2+2=4, a rise of +20% or +3.5%.",
    "Scores were 555 123 4567 in the table.",
    "The ratio is 16:9 and the verse is John 3:16.",
    "It rose +5 2024-05-23 and +1 2024-05-23 in the log.",
    "Code +28 1234 5678 has no country.",
    "UUID 123e4567-e89b-12d3-a456-426614174000 and CVE-2021-44228.",
    "IEEE 802.11 at lat 48.8566, lon 2.3522.",
]

# (text, expected output, (emails, phones, ips))
PII = [
    ("Write to john.doe@example.com today.", "Write to <EMAIL> today.", (1, 0, 0)),
    ("Or first+tag@sub.domain.co.uk.", "Or <EMAIL>.", (1, 0, 0)),
    (
        "Mail Jane_O'Neil? No: jane_oneil@uni-bonn.de, or MAX.MUSTER@GMX.NET.",
        "Mail Jane_O'Neil? No: <EMAIL>, or <EMAIL>.",
        (2, 0, 0),
    ),
    ("Call (555) 123-4567 now.", "Call <PHONE> now.", (0, 1, 0)),
    ("Call 555-123-4567 or 555.123.4567.", "Call <PHONE> or <PHONE>.", (0, 2, 0)),
    ("Call +1 555 123 4567 or 1-800-555-0199.", "Call <PHONE> or <PHONE>.", (0, 2, 0)),
    ("London: +44 20 7946 0958, Berlin: +49 30 1234567.", "London: <PHONE>, Berlin: <PHONE>.", (0, 2, 0)),
    ("Office +44 (0)20 7946 0958 and +1-555-123-4567.", "Office <PHONE> and <PHONE>.", (0, 2, 0)),
    ("Dial +4930123456 from abroad.", "Dial <PHONE> from abroad.", (0, 1, 0)),
    ("Moscow office: +7 495 123-45-67.", "Moscow office: <PHONE>.", (0, 1, 0)),
    ("Ping 192.168.1.1 and 8.8.8.8.", "Ping <IP> and <IP>.", (0, 0, 2)),
    ("Connect to 10.0.0.254:8080/api.", "Connect to <IP>:8080/api.", (0, 0, 1)),
    ("The host (203.0.113.7) went down.", "The host (<IP>) went down.", (0, 0, 1)),
    ("IPv6 2001:db8::1 and fe80::1ff:fe23:4567:890a work.", "IPv6 <IP> and <IP> work.", (0, 0, 2)),
    ("Full 2001:0db8:85a3:0000:0000:8a2e:0370:7334 form.", "Full <IP> form.", (0, 0, 1)),
    ("Mapped ::ffff:192.0.2.128 and link-local fe80::1.", "Mapped <IP> and link-local <IP>.", (0, 0, 2)),
    ("Browse http://[2001:db8::1]:8080/ now.", "Browse http://[<IP>]:8080/ now.", (0, 0, 1)),
    ("Ask admin@example.org (555) 123-4567 from 172.16.0.3.", "Ask <EMAIL> <PHONE> from <IP>.", (1, 1, 1)),
]


def scrub(text: str, **cfg) -> tuple[Document, Counter[str]]:
    doc = Document(id="d", text=text)
    stats: Counter[str] = Counter()
    assert PIIScrubber(PIIConfig(**cfg))(doc, stats) is None  # PII never drops a document
    return doc, stats


@pytest.mark.parametrize("text", NOT_PII)
def test_precision_nothing_replaced(text):
    doc, stats = scrub(STORY + " " + text)
    assert doc.text == STORY + " " + text
    assert doc.meta == {"pii_email": 0, "pii_phone": 0, "pii_ip": 0}
    assert not stats


@pytest.mark.parametrize("text,expected,counts", PII)
def test_recall_exact_replacement(text, expected, counts):
    doc, stats = scrub(STORY + " " + text)
    assert doc.text == STORY + " " + expected
    assert (doc.meta["pii_email"], doc.meta["pii_phone"], doc.meta["pii_ip"]) == counts
    assert (stats["pii.email"], stats["pii.phone"], stats["pii.ip"]) == counts


def test_counts_add_up_over_a_page():
    page = "\n".join([STORY] + [t for t, _, _ in PII] + NOT_PII)
    doc, stats = scrub(page)
    total = tuple(sum(c[i] for _, _, c in PII) for i in range(3))
    assert (stats["pii.email"], stats["pii.phone"], stats["pii.ip"]) == total
    assert doc.text == "\n".join([STORY] + [e for _, e, _ in PII] + NOT_PII)


def test_switches_and_placeholders():
    text = "Ask admin@example.org (555) 123-4567 from 172.16.0.3."
    doc, stats = scrub(text, emails=False)
    assert doc.text == "Ask admin@example.org <PHONE> from <IP>."
    assert "pii_email" not in doc.meta and doc.meta["pii_phone"] == 1
    doc, _ = scrub(text, phones=False, ips=False)
    assert doc.text == "Ask <EMAIL> (555) 123-4567 from 172.16.0.3."
    doc, _ = scrub(text, email_placeholder="[email]", phone_placeholder="[phone]", ip_placeholder="[ip]")
    assert doc.text == "Ask [email] [phone] from [ip]."
    doc, stats = scrub(text, enabled=False)
    assert doc.text == text and doc.meta == {} and not stats


def test_a_long_page():
    # ~50k words with plenty of digits, dots, colons and @ signs, but only a few real PII items.
    rng = random.Random(0)
    pieces = STORY.split() + ["3.14", "12:30", "2024-05-23", "$1,299.99", "v1.2.3", "@home", "a::b", "+5", "(1)"]
    words = [rng.choice(pieces) for _ in range(50_000)]
    for i in range(0, 50_000, 5_000):
        words[i] = "john@example.com 192.168.1.1 +44 20 7946 0958"
    page = " ".join(words)
    doc, stats = scrub(page)
    assert (stats["pii.email"], stats["pii.ip"], stats["pii.phone"]) == (10, 10, 10)
