"""Names people type (classes, sub-classes, annotators, the project, file names) shown as text.

Streamlit renders Markdown in st.markdown, st.caption, st.write, alerts, toasts, st.table cells, image
captions, progress texts and widget labels: a class named ``![b](http://host/x.png)`` would make every
annotator's browser fetch that URL. Every such call puts a name through :func:`md_text` first.
"""

from __future__ import annotations

import re

# Every ASCII punctuation character: CommonMark lets a backslash escape each of them, and escaping them all
# also stops Streamlit's own syntax (":red[...]", ":material/...:", "$math$") and autolinks ("http://").
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def md_text(value: object) -> str:
    """``value`` as Markdown that renders as exactly its text: punctuation backslash-escaped, and each line
    ended with a hard break (so a line cannot start a heading, a list or a code block of its own)."""
    lines = str(value).splitlines() or [""]
    return "  \n".join(_PUNCTUATION.sub(r"\\\1", line) for line in lines)
