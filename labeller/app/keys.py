"""The Label page's keyboard map: one key per main class, one per sub-class tag, plus the page's actions.

The keys are the taxonomy file's own (what ``labeller taxonomy --show`` prints and the Data page edits).
Sub-class keys are live only once their main class is chosen, so, as the taxonomy file allows, they may
repeat across main classes (the demo gives both main classes' sub-classes q, w, e, ...).

A class gets a key from a fixed pool only when the file gives it none or one it cannot have (a key of the
page's own actions, Streamlit's "c"/"r", a duplicate); such a key is marked ``assigned`` and the Data page
and the ``?`` overlay say so, so the app never shows a key the file does not explain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Streamlit binds "c" (clear cache) and "r" (rerun) itself; the taxonomy file refuses them too.
STREAMLIT_RESERVED = frozenset({"c", "r"})


@dataclass(frozen=True)
class PageKeys:
    """Keys of the Label page's own actions (not tied to a class)."""

    skip: str = "s"
    unsure: str = "u"
    undo: str = "z"
    reveal: str = "v"
    commit_tags: str = "Enter"
    help: str = "?"

    def as_set(self) -> frozenset[str]:
        return frozenset(key.lower() for key in (self.skip, self.unsure, self.undo, self.reveal, self.help))

    def described(self) -> tuple[tuple[str, str], ...]:
        """(key, what it does) for the help overlay."""
        return (
            (self.skip, "skip this image (it comes back after everything else)"),
            (self.unsure, "unsure (with tags: a tentative label)"),
            (self.undo, "undo the last decision: its image comes back"),
            (self.reveal, "reveal or hide a blurred image"),
            (self.commit_tags, "label with the chosen tags' main class"),
            ("Shift+main key", "choose a main class for its sub-class keys without labelling"),
            ("Escape", "clear the chosen tags"),
            (self.help, "show or hide this list"),
        )


PAGE_KEYS = PageKeys()
MAIN_KEY_POOL = "123456789"
TAG_KEY_POOL = "qwetyiopadfghjklxbnm0"


@dataclass(frozen=True)
class ClassKey:
    class_id: int
    name: str
    key: str | None  # None when every key in the pool is taken
    assigned: bool = False  # True when the key is not the taxonomy file's (it gave none, or an unusable one)


@dataclass(frozen=True)
class KeyMap:
    main: tuple[ClassKey, ...]
    tags: dict[int, tuple[ClassKey, ...]]  # main class id -> its sub-classes' keys

    def main_by_key(self) -> dict[str, ClassKey]:
        return {k.key: k for k in self.main if k.key}

    def tag_owners(self, key: str) -> list[int]:
        """The main classes that have a sub-class on ``key`` (several when the file repeats it)."""
        return [main_id for main_id, subs in self.tags.items() if any(k.key == key.lower() for k in subs)]

    @property
    def assigned(self) -> list[ClassKey]:
        return [k for k in (*self.main, *(k for subs in self.tags.values() for k in subs)) if k.assigned]


def _well_formed(key: str | None) -> bool:
    return bool(key) and len(key) == 1 and key.isalnum()  # type: ignore[arg-type]


def _usable(key: str | None, taken: set[str]) -> bool:
    if not _well_formed(key):
        return False
    assert key is not None
    lowered = key.lower()
    return lowered not in STREAMLIT_RESERVED and lowered not in PAGE_KEYS.as_set() and lowered not in taken


def _assign(
    items: Sequence[tuple[int, str, str | None]], pool: str, taken: set[str], avoid: set[str] | None = None
) -> tuple[ClassKey, ...]:
    """Keep each usable key of the file, then fill the rest from ``pool`` in order, also avoiding ``avoid``
    (keys given elsewhere, so that an assigned key is never ambiguous); ``taken`` and ``avoid`` grow."""
    avoid = set() if avoid is None else avoid
    chosen: dict[int, str | None] = {}
    for class_id, _name, wish in items:
        if _usable(wish, taken):
            assert wish is not None
            chosen[class_id] = wish.lower()
            taken.add(wish.lower())
            avoid.add(wish.lower())
    free = [key for key in pool if _usable(key, taken | avoid)]
    keys = []
    for class_id, name, _wish in items:
        assigned = class_id not in chosen
        if assigned:
            chosen[class_id] = free.pop(0) if free else None
            if chosen[class_id]:
                taken.add(chosen[class_id])  # type: ignore[arg-type]
                avoid.add(chosen[class_id])  # type: ignore[arg-type]
        keys.append(ClassKey(class_id, name, chosen[class_id], assigned=assigned))
    return tuple(keys)


def build_key_map(
    main_classes: Sequence[tuple[int, str, str | None]],
    sub_classes: dict[int, Sequence[tuple[int, str, str | None]]],
) -> KeyMap:
    """``main_classes``: (id, name, the file's key) in display order; ``sub_classes``: main id -> the same.

    Main-class keys are unique across main classes; a sub-class key is unique within its main class and
    never a main-class key (it may repeat under another main class, as the taxonomy file allows)."""
    main_taken: set[str] = set()
    main = _assign(main_classes, MAIN_KEY_POOL, main_taken)
    # The file's sub-class keys first, all of them, so that no assigned key lands on one of them.
    given = {wish.lower() for subs in sub_classes.values() for _, _, wish in subs if _well_formed(wish)} - main_taken
    tags = {main_id: _assign(subs, TAG_KEY_POOL, set(main_taken), given) for main_id, subs in sub_classes.items()}
    return KeyMap(main=main, tags=tags)


def key_rows(keys: KeyMap, main_names: dict[int, str]) -> list[dict[str, str]]:
    """One row per class key for a table (Data page, help overlay): what the key does and where it came from."""
    rows = []
    for k in keys.main:
        rows.append({"key": k.key or "-", "class": k.name, "source": "assigned" if k.assigned else "taxonomy file"})
        for sub in keys.tags.get(k.class_id, ()):
            rows.append(
                {
                    "key": sub.key or "-",
                    "class": f"{main_names.get(k.class_id, k.name)} / {sub.name}",
                    "source": "assigned" if sub.assigned else "taxonomy file",
                }
            )
    return rows
