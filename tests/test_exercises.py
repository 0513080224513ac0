"""docs/exercises.md keeps its form: each exercise a ### heading "<Paper> <n>. <question>", and docs/teaching.md's
index lists every one of them. Their commands run in tests/test_docs.py, with every other documented command."""
import re

from conftest import ROOT

EXERCISES = ROOT / "docs/exercises.md"


def headings():
    return [line[4:].strip() for line in EXERCISES.read_text().splitlines() if line.startswith("### ")]


def test_every_exercise_is_named_by_its_paper_and_number():
    found = headings()
    assert found and all(re.match(r"^\S.* \d+\. ", heading) for heading in found), found


def test_the_teaching_page_indexes_every_exercise():
    """docs/teaching.md's index has a row per ### heading of docs/exercises.md, in order, linking its anchor (GitHub's:
    lower case, punctuation dropped, spaces to hyphens), and every link into exercises.md names a heading."""
    anchors = [re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings()]
    teaching = (ROOT / "docs/teaching.md").read_text()
    rows = [re.match(r"\| \[.*?\]\(exercises\.md#([\w-]+)\)", line) for line in teaching.splitlines()]
    assert [row[1] for row in rows if row] == anchors
    assert set(re.findall(r"\(exercises\.md#([\w-]+)\)", teaching)) <= set(anchors)
