"""Output names: the injective map from an input's relative key to its output path.

An input's *relative key* is its path below the listed root (a prefix or glob listing), or, for a
list file, its redacted URI without ``scheme://`` and without one leading ``/``
(``s3://bucket/a/b.jpg`` → ``bucket/a/b.jpg``, ``/data/a.png`` → ``data/a.png``). Its output is
``images/<output_rel_path(output_name(key), format)>``:

- ``output_name(key)`` is the key itself when the key is *plain*: NFC, every ``/``-separated
  segment non-empty, not ``.`` or ``..`` and at most SEGMENT_BYTES bytes of UTF-8, at most
  TOTAL_BYTES bytes in all, no control character (C0, DEL, C1) and no backslash, no ``~`` followed
  by 16 hex digits, ending in an image extension (ASCII letters, any case) that does not itself
  follow another image extension (``x.jpg.png`` is not plain).
- Any other key is *altered*: NFC, unsafe characters → ``_``, empty and ``.`` segments dropped,
  ``..`` → ``__``, segments and the whole cut to the limits, and ``~<hash>`` inserted before the
  image extension of the last segment (at its end if it has none), where ``<hash>`` is the first
  HASH_HEX hex digits of the SHA-256 of the exact key's UTF-8 bytes.
- ``output_rel_path(name, format)`` keeps the name when it already ends in one of the format's
  extensions (``a.png``, ``a.JPG`` as jpeg) and appends the format's first extension otherwise
  (``a.jpg`` → ``a.jpg.png``).

Why this is injective: a plain name never contains ``~`` + 16 hex digits and an altered one always
does, as its last ``~`` (only an image extension and an appended extension follow it, neither holds
a ``~``), so altered outputs never meet plain ones and two altered outputs are equal only if their
keys' hashes are. Two plain outputs: an appended extension is the last dotted part, so equal
outputs that both appended (or both kept) come from equal keys; one kept (``k1``) equal to one
appended (``k2 + ext``) would make ``k1`` end in an image extension followed by an output
extension, which is not plain. A key gets the same name in every run (a pure function of the key).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.images import FORMAT_EXTENSIONS, IMAGE_EXTENSIONS

SEGMENT_BYTES = 200  # ≤ 255 (file systems' name limit) with an appended extension and a temp-file suffix to spare
TOTAL_BYTES = 900  # S3 keys are ≤ 1,024 bytes: the rest is for the output prefix, images/ and an appended extension
HASH_HEX = 16  # 64 bits: names cut to the same prefix (a million long keys sharing 200 bytes) stay apart

_UNSAFE = r"[\x00-\x1f\x7f-\x9f\\]"  # control characters (C0, DEL, C1) and backslashes
_UNSAFE_RE = re.compile(_UNSAFE + r"|[\ud800-\udfff]")  # lone surrogates: no Arrow string holds them
_MARK = f"~[0-9a-fA-F]{{{HASH_HEX}}}"  # what an altered name carries; a plain name may not look altered
_BAD_SEGMENT = r"(^|/)\.{0,2}(/|$)"  # an empty, "." or ".." segment


def _any_case(ext: str) -> str:
    """A regex for ``ext`` (".jpg") in any ASCII case, the same in Python's re and Arrow's RE2."""
    return r"\." + "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext[1:])


_IMAGE = "(" + "|".join(_any_case(e) for e in sorted(IMAGE_EXTENSIONS)) + ")"
_APPENDED = "(" + "|".join(_any_case(exts[0]) for exts in FORMAT_EXTENSIONS.values()) + ")"
_IMAGE_END = _IMAGE + "$"
_DOUBLE_END = _IMAGE + _APPENDED + "$"  # x.jpg.png: could be x.jpg with .png appended
_NOT_PLAIN = f"{_UNSAFE}|{_BAD_SEGMENT}|{_MARK}|{_DOUBLE_END}"
_NOT_PLAIN_RE = re.compile(_NOT_PLAIN)
_IMAGE_END_RE = re.compile(_IMAGE_END)


def is_plain(key: str) -> bool:
    """Whether ``key`` is its own output name (see the module docstring)."""
    if _UNSAFE_RE.search(key) or _NOT_PLAIN_RE.search(key) or not _IMAGE_END_RE.search(key):
        return False
    if len(key.encode()) > TOTAL_BYTES or unicodedata.normalize("NFC", key) != key:
        return False
    return all(len(s.encode()) <= SEGMENT_BYTES for s in key.split("/"))


def key_hash(key: str) -> str:
    """The first HASH_HEX hex digits of the SHA-256 of ``key``'s exact UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX]


def _cut(text: str, limit: int) -> str:
    """``text``'s longest prefix of at most ``limit`` UTF-8 bytes (whole characters)."""
    return text.encode()[: max(limit, 0)].decode(errors="ignore")


def _clean_segment(segment: str) -> str | None:
    """A segment as an altered name holds it (".." → "__"), or None for one it drops ("" and ".")."""
    if segment in ("", "."):
        return None
    return "__" if segment == ".." else segment


def output_name(key: str) -> str:
    """The output name (a relative path: ``/``-separated, no empty, ``.`` or ``..`` segment, each
    segment ≤ SEGMENT_BYTES bytes, ≤ TOTAL_BYTES bytes in all) of an input's relative key: the key
    itself when it is plain, else its cleaned, cut form with ``~<key_hash(key)>`` before the
    image extension."""
    if is_plain(key):
        return key
    text = _UNSAFE_RE.sub("_", unicodedata.normalize("NFC", key))
    segments = [s for s in map(_clean_segment, text.split("/")) if s is not None] or ["_"]
    *folders, last = segments
    match = _IMAGE_END_RE.search(last)
    ext = match.group(0) if match else ""
    mark = f"~{key_hash(key)}{ext}"
    last = _cut(last[: len(last) - len(ext)], SEGMENT_BYTES - len(mark.encode())) + mark
    room = TOTAL_BYTES - len(last.encode())
    kept = []
    for folder in folders:
        folder = _clean_segment(_cut(folder, min(SEGMENT_BYTES, room - 1)))  # a cut may leave "." or ".."
        if folder is None:
            break
        kept.append(folder)
        room -= len(folder.encode()) + 1
        if room <= 1:
            break
    return "/".join([*kept, last])


def output_names(keys: pa.Array) -> pa.Array:
    """``output_name`` over an Arrow string array: Python runs only on the keys Arrow cannot
    show to be plain (short ones that pass the same regexes and are NFC)."""
    maybe = pc.or_(
        pc.or_(pc.match_substring_regex(keys, _NOT_PLAIN), pc.invert(pc.match_substring_regex(keys, _IMAGE_END))),
        pc.or_(
            pc.greater(pc.binary_length(keys), SEGMENT_BYTES),
            pc.not_equal(pc.utf8_normalize(keys, "NFC"), keys),
        ),
    )
    if not pc.any(maybe).as_py():
        return keys
    values = keys.to_pylist()
    for i in pc.indices_nonzero(maybe).to_pylist():
        values[i] = output_name(values[i])
    return pa.array(values, pa.string())


def output_rel_path(name: str, fmt: str) -> str:
    """The output's path below ``images/`` for an output name written as ``fmt``: unchanged when
    it already ends in one of ``fmt``'s extensions (any ASCII case), else ``fmt``'s first extension
    appended (``a.jpg`` → ``a.jpg.png``), so two inputs that differ only in extension never meet."""
    for ext in FORMAT_EXTENSIONS[fmt]:
        tail = name[-len(ext) :]
        if tail.isascii() and tail.lower() == ext:
            return name
    return f"{name}{FORMAT_EXTENSIONS[fmt][0]}"
