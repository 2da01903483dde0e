"""Output names from hostile text: nothing that leaves, hides in or collides inside the output folder."""

from __future__ import annotations

import re

import pytest

from bundle.inference.names import MAX_STEM, safe_stem, unique_stems

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@pytest.mark.parametrize("text, expected", [
    ("case_001", "case_001"),
    ("CT abdomen 3", "CT_abdomen_3"),
    ("../../etc/passwd", "etc_passwd"),
    ("..\\..\\windows\\system32", "windows_system32"),
    ("name\x00with\x1b[31mcontrol\x07", "name_with_31mcontrol"),
    ("Thorax^Abdomen (contrast) 1.25mm", "Thorax_Abdomen_contrast_1.25mm"),
    ("Töpfer Ça", "Topfer_Ca"),
    ("...", "input"),
    ("", "input"),
    ("a..b", "a_b"),
])
def test_safe_stem(text, expected):
    stem = safe_stem(text)
    assert stem == expected
    assert SAFE.match(stem) and ".." not in stem


def test_safe_stem_is_bounded_and_never_hidden():
    stem = safe_stem(".hidden" + "x" * 500)
    assert len(stem) <= MAX_STEM and not stem.startswith(".")
    assert safe_stem("\x00\x01", fallback="series") == "series"


def test_unique_stems_only_rename_clashes_and_stay_stable():
    names = unique_stems(["SE1", "SE1", "other", "se1"], ["/a/SE1", "/b/SE1", "/c/other", "/d/se1"])
    assert names[2] == "other"
    assert len({n.lower() for n in names}) == 4  # case-insensitive file systems keep them apart too
    again = unique_stems(["SE1", "SE1"], ["/b/SE1", "/a/SE1"])
    assert again == [names[1], names[0]]  # the suffix depends on the input, not on its position
    with pytest.raises(ValueError):
        unique_stems(["a"], [])
