"""Text as a terminal shows it: widths, escapes, and characters named.

The display width of text (wide CJK characters and most emoji take two
columns, combining marks none) puts a caret under the exact place; control
characters are escaped so that text from a file can never move the cursor or
recolour the terminal; a character the language does not take is named by
code point and Unicode name, with the ASCII character it looks like.
"""

from __future__ import annotations

import unicodedata

def char_width(char: str) -> int:
    """Terminal columns a character takes: 2 for wide ones, 0 for marks that
    combine with the one before, 1 otherwise."""
    if char < "\u0300":  # Latin-1 and the like: the common case, at once
        return 1
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes (see :func:`char_width`)."""
    if text.isascii():
        return len(text)
    return sum(char_width(c) for c in text)


def visible(text: str) -> str:
    """``text`` with every control and invisible formatting character made a
    visible escape (``\\x1b``, ``\\u200b``): safe to print, one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def visible_lines(text: str) -> str:
    """Like :func:`visible`, but line breaks and tabs are kept as they are."""
    return "\n".join("\t".join(visible(part) for part in line.split("\t")) for line in text.split("\n"))


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


# characters the language does not take ------------------------------------------

# Characters that look like (or stand in for) ASCII the language uses; more
# are found by NFKC normalisation (the fullwidth forms).
_LOOK_ALIKES = {
    **dict.fromkeys("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
                    "\u202f\u205f\u3000", " "),
    **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad", ""),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb\uff02", '"'),
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032", "'"),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d", "-"),
    "\u2024": ".", "\u00b7": ".", "\u037e": ";", "\u2044": "/",
}


def describe_char(char: str) -> str:
    """``'é' (U+00E9 LATIN SMALL LETTER E WITH ACUTE)``, or for a character
    that does not show, only its code point and name."""
    name = unicodedata.name(char, "")
    if not name:
        category = unicodedata.category(char)
        name = {"Cc": "a control character", "Cs": "a surrogate", "Co": "a private-use character"}.get(
            category, "unassigned")
    point = f"U+{ord(char):04X} {name}"
    if char.isprintable() and not char.isspace():
        return f"'{char}' ({point})"
    return point


def ascii_intent(char: str) -> str | None:
    """The ASCII text ``char`` most likely stands for ('' for an invisible
    one), or None."""
    if char in _LOOK_ALIKES:
        return _LOOK_ALIKES[char]
    folded = unicodedata.normalize("NFKC", char)
    if folded != char and folded.isascii() and folded.isprintable():
        return folded
    return None


def look_alike_help(char: str) -> str | None:
    """A help line for a character that looks like ASCII the language uses."""
    intent = ascii_intent(char)
    if intent is None:
        return None
    if intent == "":
        return "an invisible character (pasted from a web page or a document?): delete it"
    if intent == " ":
        return "it looks like a space but is not one: retype it as a plain space"
    if intent == '"':
        return 'typographic quotes: write strings in plain double quotes, "like this"'
    if intent == "'":
        return 'strings are written in plain double quotes: "text"'
    return f"it looks like '{intent}' but is not: retype it as the ASCII '{intent}'"

