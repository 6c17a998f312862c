"""The test tree's own rules: it mirrors llmctl/, and pytest's default import mode needs every test
module's file name to be unique across folders."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "llmctl"


def test_test_module_names_are_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []


def test_test_folders_mirror_packages():
    folders = {p.relative_to(TESTS) for p in TESTS.rglob("*") if p.is_dir() and any(p.glob("test_*.py"))}
    missing = [str(f) for f in folders if not (PACKAGE / f).is_dir()]
    assert missing == []
