"""Every rendered table in README.md and docs/*.md is what `python -m benchmarks.tables` renders
from the records it names: editing a number by hand, or pointing a spec at another run without
re-rendering, fails here."""

import subprocess
import sys

import pytest

from benchmarks import tables


def test_every_table_in_the_docs_matches_its_records():
    blocks = []
    for path in tables.documents():
        _, changed = tables.stale_blocks(path)
        assert changed == [], f"{path}: run python -m benchmarks.tables ({changed})"
        with open(path, encoding="utf-8") as f:
            blocks += [m["name"] for m in tables.BLOCK.finditer(f.read())]
    assert set(tables.TABLES) <= set(blocks)  # every table is in the docs; the check is not vacuous


def test_a_hand_edited_table_is_caught(tmp_path):
    doc = tmp_path / "README.md"
    fresh = tables.render("seq2seq-decode")
    doc.write_text(f"x\n<!-- table: seq2seq-decode -->\n{fresh.replace('1.22×', '1.25×')}"
                   "<!-- end table -->\n")
    text, changed = tables.stale_blocks(str(doc))
    assert changed == ["seq2seq-decode"] and fresh in text and "1.25×" not in text


def test_a_ratio_is_computed_from_the_medians_in_its_row():
    for line in tables.render("seq2seq-decode").splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        old, new = (float(c.split()[0]) for c in cells[2:4])
        assert float(cells[4].split("×")[0].strip("*")) == pytest.approx(new / old, abs=0.006)


def test_the_check_command_passes_on_the_docs_as_committed():
    done = subprocess.run([sys.executable, "-m", "benchmarks.tables", "--check"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
