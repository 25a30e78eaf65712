"""Plain text from MediaWiki markup (`strip_wiki_markup`), by our own rules: no parser
library, every rule a regex or a balanced-span scan listed in the docstring."""

from __future__ import annotations

import html
import re

__all__ = ["strip_wiki_markup"]

# Elements whose *content* is not prose (citations, LaTeX, image lists, ...): dropped
# together with their tags. All other tags are dropped but their content is kept.
_DROPPED_ELEMENTS = (
    "ref", "math", "chem", "ce", "gallery", "imagemap", "timeline", "score", "graph",
    "syntaxhighlight", "source", "hiero", "mapframe", "templatedata", "references",
)  # fmt: skip
_DROPPED_ELEMENT_RE = re.compile(
    rf"<({'|'.join(_DROPPED_ELEMENTS)})\b[^<>]*?(?:/>|>.*?</\1\s*>)", re.IGNORECASE | re.DOTALL
)
_COMMENT_RE = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
# A tag: '<' + name (letters first) + attributes; '/>' or '>'. "a < b" is not a tag.
_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_TEMPLATE_TOKEN_RE = re.compile(r"\{\{|\}\}")
# Tables open with "{|" and close with "|}" at the start of a line (after spaces).
_TABLE_TOKEN_RE = re.compile(r"^[ \t]*(?:\{\||\|\})", re.MULTILINE)
# [[…]] holding no other [[…]]; lone brackets ("[sic]", "Bicyclo[1.1.0]") are allowed.
_INNERMOST_LINK_RE = re.compile(r"\[\[((?:[^\[\]]|\[(?!\[)|\](?!\]))*?)\]\]")
_DROPPED_LINK_NAMESPACES = frozenset({"file", "image", "category", "media"})
# Interlanguage links: [[de:Anarchismus]], [[zh-min-nan:...]] (no label).
_INTERLANGUAGE_RE = re.compile(r"^[a-z]{2,3}(?:-[a-z]+)*$")
_EXTERNAL_LINK_RE = re.compile(r"\[(?:https?:|ftp:)?//[^\s\[\]]*(?:\s+([^\[\]]*))?\]", re.IGNORECASE)
_BOLD_ITALIC_RE = re.compile(r"'{2,}")
_HEADING_RE = re.compile(r"^[ \t]*(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", re.MULTILINE)
_LIST_MARKER_RE = re.compile(r"^[ \t]*[*#:;]+[ \t]*", re.MULTILINE)
_HORIZONTAL_RULE_RE = re.compile(r"^-{4,}[ \t]*$", re.MULTILINE)
_BEHAVIOUR_SWITCH_RE = re.compile(r"__[A-Z]+__")
_SPACE_RUN_RE = re.compile(r"[ \t\xa0]+")
_BLANK_LINE_RUN_RE = re.compile(r"\n{3,}")


def _remove_balanced(text: str, token_re: re.Pattern[str], opener: str) -> str:
    """Removes every outermost ``opener … closer`` span, honouring nesting.

    ``token_re`` matches openers and closers; a match starting with ``opener`` opens.
    An unmatched closer is kept as text; an unmatched opener (unclosed template) is
    kept too rather than swallowing the rest of the article.
    """
    open_starts: list[int] = []
    removed: list[tuple[int, int]] = []  # outermost spans, in order
    for token in token_re.finditer(text):
        if token.group().lstrip().startswith(opener):
            open_starts.append(token.start())
        elif open_starts:
            start = open_starts.pop()
            if not open_starts:
                removed.append((start, token.end()))
    if not removed:
        return text
    pieces, cursor = [], 0
    for start, end in removed:
        pieces.append(text[cursor:start])
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def _render_wikilink(match: re.Match[str]) -> str:
    inner = match.group(1)
    target, has_label, label = inner.partition("|")
    target = target.strip()
    if target.startswith(":"):  # [[:Category:X]] is a visible link to X, not a tag
        target = target[1:]
    else:
        namespace, has_colon, _ = target.partition(":")
        if has_colon and namespace.strip().lower() in _DROPPED_LINK_NAMESPACES:
            return ""
        if has_colon and not has_label and _INTERLANGUAGE_RE.match(namespace):
            return ""
    if has_label and label.strip():
        return label.strip()
    return target


def strip_wiki_markup(text: str) -> str:
    """Plain text of a MediaWiki article body.

    Rules, applied in this order (each step assumes the ones before it):

    1. ``<!-- comments -->`` are removed.
    2. Non-prose elements are removed with their content: ``<ref>…</ref>``,
       ``<ref name=x/>``, ``<math>``, ``<gallery>``, ``<timeline>``, ``<source>``, ...
       (see ``_DROPPED_ELEMENTS``). Every other tag (``<sub>``, ``<br/>``,
       ``<blockquote>``, ...) is removed but its content is kept.
    3. Templates ``{{…}}`` are removed, nested ones included (infoboxes, citations,
       navboxes; their parameters are rarely prose).
    4. Tables ``{| … |}`` (markers at line starts) are removed, nested ones included.
    5. Wiki links, innermost first so that captions of image links can hold links:
       ``[[File:…]]``, ``[[Image:…]]``, ``[[Media:…]]``, ``[[Category:…]]`` and
       interlanguage links ``[[de:…]]`` are removed; ``[[a|b]]`` → ``b``;
       ``[[a]]`` → ``a``; ``[[:Category:X|X]]`` → ``X``.
    6. External links: ``[http://x label]`` → ``label``; ``[http://x]`` → nothing
       (rendered as a footnote number). Bare URLs are kept.
    7. Bold/italic quotes ``'''``/``''`` are removed; headings ``== X ==`` → ``X``;
       list markers ``* # : ;`` at line starts and ``----`` rules are removed;
       behaviour switches (``__NOTOC__``) are removed.
    8. HTML entities are decoded (``&nbsp;``, ``&ndash;``); runs of spaces become
       one space, lines are stripped, and runs of blank lines become one blank line.

    Known limits: templates that produce prose (``{{convert|5|km}}``,
    ``{{lang|fr|…}}``) vanish; unbalanced markup is kept as literal text.

    Args:
      text: wikitext as stored in a dump's ``<text>`` element (XML already decoded).

    Returns:
      Plain text with paragraphs separated by one blank line, stripped.
    """
    text = _COMMENT_RE.sub("", text)
    text = _DROPPED_ELEMENT_RE.sub("", text)
    text = _TAG_RE.sub("", text)
    text = _remove_balanced(text, _TEMPLATE_TOKEN_RE, "{{")
    text = _remove_balanced(text, _TABLE_TOKEN_RE, "{|")
    while True:  # one pass per nesting level of [[…[[…]]…]]
        rendered = _INNERMOST_LINK_RE.sub(_render_wikilink, text)
        if rendered == text:
            break
        text = rendered
    text = _EXTERNAL_LINK_RE.sub(lambda m: m.group(1) or "", text)
    text = _BOLD_ITALIC_RE.sub("", text)
    text = _HEADING_RE.sub(r"\2", text)
    text = _LIST_MARKER_RE.sub("", text)
    text = _HORIZONTAL_RULE_RE.sub("", text)
    text = _BEHAVIOUR_SWITCH_RE.sub("", text)
    text = html.unescape(text)
    text = _SPACE_RUN_RE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANK_LINE_RUN_RE.sub("\n\n", text)
    return text.strip()
