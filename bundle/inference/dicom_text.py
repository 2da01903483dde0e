"""DICOM text made valid for its value representation: what a DICOM-SEG copies from its source headers.

Source headers come from many writers (and may be hostile): control characters, backslashes inside single-valued
text, values longer than their VR allows, dates and code strings that do not parse. :func:`clean_copy` returns a copy
of a header whose text strict readers (pydicom in RAISE mode, dciodvfy) accept: control characters and backslashes
removed, lengths cut to the VR's limit (counted in UTF-8 bytes), unparsable dates and code strings emptied. UIDs are
never touched. :func:`character_set` picks the source's character set when it encodes every text, else UTF-8.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import highdicom as hd
import pydicom
from pydicom.charset import convert_encodings
from pydicom.datadict import DicomDictionary, dictionary_VM
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import PersonName, validate_value

__all__ = ["character_set", "clean_copy", "clean_text", "code_string", "parses"]

_MAX_CHARS = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "ST": 1024, "LT": 10240}
_ONE_LINE_VRS = {"AE", "SH", "LO", "UC", "PN"}  # no control characters, no backslash (the value separator)
_TEXT_VRS = {"ST", "LT", "UT"}  # may hold TAB, LF, FF and CR
_PARSED_VRS = {"CS", "DA", "TM", "DT", "AS"}  # emptied when the value does not parse
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # pydicom decodes ISO 2022 escapes, so no decoded text keeps an ESC
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def clean_text(vr: str, text: str) -> str:
    """``text`` made valid for ``vr`` (a text VR): forbidden characters removed, cut to the VR's length."""
    if vr in _TEXT_VRS:
        text = _TEXT_CONTROL.sub(" ", text)
    else:
        text = _CONTROL.sub(" ", text).replace("\\", "/")
    if vr == "PN":  # at most 3 component groups of at most 5 components, 64 characters each
        groups = []
        for group in text.split("=")[:3]:
            parts = group.split("^")
            parts = parts[:4] + [" ".join(parts[4:])] if len(parts) > 5 else parts
            groups.append(_fit("^".join(parts).strip(), 64))
        text = "=".join(groups)
    if vr in _TEXT_VRS:  # leading spaces are significant in texts only
        return _fit(text, _MAX_CHARS.get(vr)).rstrip()
    return _fit(text.strip(), _MAX_CHARS.get(vr)).rstrip()


def _fit(text: str, limit: int | None) -> str:
    """``text`` cut to ``limit`` bytes in UTF-8, the longest of the character sets used here.

    The standard counts characters, but strict readers (pydicom in RAISE mode) check the encoded bytes.
    """
    if limit is None or len(text.encode("utf-8")) <= limit:
        return text
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def parses(vr: str, text: str) -> bool:
    try:
        validate_value(vr, text, pydicom.config.RAISE)
    except ValueError:
        return False
    return True


def _clean_value(tag, vr: str, keyword: str, value):
    """A valid replacement for ``value``, or ``value`` itself when it is valid."""
    if value is None or vr not in _ONE_LINE_VRS | _TEXT_VRS | _PARSED_VRS:
        return value
    single_valued = tag in DicomDictionary and dictionary_VM(tag) == "1"
    if single_valued and isinstance(value, MultiValue) and len(value) > 1:
        # a backslash inside a single-valued text split it into several values: join them back
        return "" if vr in _PARSED_VRS else clean_text(vr, "/".join(str(v) for v in value))
    values = list(value) if isinstance(value, MultiValue) else [value]
    cleaned = []
    for item in values:
        if not isinstance(item, (str, PersonName)):
            cleaned.append(item)  # undecoded bytes: nothing to judge
            continue
        text = str(item)
        if vr in _PARSED_VRS:
            candidates = (text, text.upper().strip()) if vr == "CS" else (text,)
            new = next((c for c in candidates if parses(vr, c) and len(c) <= _MAX_CHARS.get(vr, 64)), "")
            if keyword == "PatientSex" and new not in ("M", "F", "O", ""):
                new = ""
        else:
            new = clean_text(vr, text)
        cleaned.append(item if new == text else new)
    if all(new is old for new, old in zip(cleaned, values)):
        return value
    return cleaned if isinstance(value, MultiValue) else cleaned[0]


def clean_copy(dataset: Dataset, cleaned: list[str]) -> Dataset:
    """A copy of ``dataset`` without pixel data whose text is valid for its VRs (see module docstring)."""
    out = Dataset()
    for elem in dataset:
        if elem.tag.group == 0x7FE0:  # pixel data: never needed (and not read with stop_before_pixels)
            continue
        if elem.VR == "SQ":
            out.add(DataElement(elem.tag, "SQ", DicomSequence([clean_copy(item, cleaned) for item in elem.value])))
            continue
        value = _clean_value(elem.tag, elem.VR, elem.keyword, elem.value)
        if value is elem.value:
            out.add(copy.copy(elem))  # a new element: setting a value on the copy must not reach the caller's
        else:
            out.add(DataElement(elem.tag, elem.VR, value))
            cleaned.append(elem.keyword or str(elem.tag))
    return out


def _text_values(dataset: Dataset) -> list[str]:
    texts = []
    for elem in dataset:
        if elem.VR == "SQ":
            texts.extend(text for item in elem.value for text in _text_values(item))
        elif elem.VR in _ONE_LINE_VRS | _TEXT_VRS and elem.value is not None:
            texts.extend(str(v) for v in (elem.value if isinstance(elem.value, MultiValue) else [elem.value]))
    return texts


def character_set(header: Dataset, own_texts: Sequence[str]):
    """The source's SpecificCharacterSet when highdicom accepts it and it encodes every text, else UTF-8."""
    terms = header.get("SpecificCharacterSet")
    terms = [] if terms is None else ([terms] if isinstance(terms, str) else list(terms))
    texts = [*_text_values(header), *own_texts]
    try:
        for term in terms:
            hd.SpecificCharacterSetValues(term)
        if len(terms) > 1:  # ISO 2022 code extensions: pydicom switches character sets while encoding
            return terms
        codec = convert_encodings(terms)[0] if terms else "ascii"
        for text in texts:
            text.encode(codec)
    except (ValueError, LookupError, UnicodeError):  # unknown term or a text it cannot encode
        return "ISO_IR 192"
    return terms[0] if terms else None


def code_string(text: str, fallback: str) -> str:
    """``text`` as a CS that highdicom accepts: upper case, ``_`` between words, starts with a letter."""
    text = re.sub(r"[^A-Z0-9]+", "_", text.upper()).lstrip("_0123456789 ")[:16].rstrip("_")
    return text or fallback
