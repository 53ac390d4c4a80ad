"""The Label page's keyboard map: one key per main class, one per sub-class tag, plus the page's actions.

The taxonomy's own shortcut keys win where they are usable; a missing, reserved or duplicate key is
replaced by the next free key from a fixed pool, so every class always has a key and no two share one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Streamlit keeps "c" (clear cache) and "r" (rerun) for itself.
STREAMLIT_RESERVED = frozenset({"c", "r"})


@dataclass(frozen=True)
class PageKeys:
    """Keys of the Label page's own actions (not tied to a class)."""

    skip: str = "s"
    unsure: str = "u"
    undo: str = "z"
    reveal: str = "v"
    commit_tags: str = "Enter"

    def as_set(self) -> frozenset[str]:
        return frozenset(key.lower() for key in (self.skip, self.unsure, self.undo, self.reveal))


PAGE_KEYS = PageKeys()
MAIN_KEY_POOL = "123456789"
TAG_KEY_POOL = "qwetyiopadfghjklxbnm0"


@dataclass(frozen=True)
class ClassKey:
    class_id: int
    name: str
    key: str | None  # None when every key in the pool is taken


@dataclass(frozen=True)
class KeyMap:
    main: tuple[ClassKey, ...]
    tags: dict[int, tuple[ClassKey, ...]]  # main class id -> its sub-classes' keys

    def main_by_key(self) -> dict[str, ClassKey]:
        return {k.key: k for k in self.main if k.key}


def _usable(key: str | None, taken: set[str]) -> bool:
    if not key or len(key) != 1 or not key.isalnum():
        return False
    lowered = key.lower()
    return lowered not in STREAMLIT_RESERVED and lowered not in PAGE_KEYS.as_set() and lowered not in taken


def _assign(items: Sequence[tuple[int, str, str | None]], pool: str, taken: set[str]) -> tuple[ClassKey, ...]:
    """Keep each usable wished-for key, then fill the rest from ``pool`` in order."""
    chosen: dict[int, str | None] = {}
    for class_id, _name, wish in items:
        if _usable(wish, taken):
            assert wish is not None
            chosen[class_id] = wish.lower()
            taken.add(wish.lower())
    free = [key for key in pool if _usable(key, taken)]
    for class_id, _name, _wish in items:
        if class_id not in chosen:
            chosen[class_id] = free.pop(0) if free else None
            if chosen[class_id]:
                taken.add(chosen[class_id])  # type: ignore[arg-type]
    return tuple(ClassKey(class_id, name, chosen[class_id]) for class_id, name, _ in items)


def build_key_map(
    main_classes: Sequence[tuple[int, str, str | None]],
    sub_classes: dict[int, Sequence[tuple[int, str, str | None]]],
) -> KeyMap:
    """``main_classes``: (id, name, wished key) in display order; ``sub_classes``: main id -> the same."""
    taken: set[str] = set()
    main = _assign(main_classes, MAIN_KEY_POOL, taken)
    tags = {main_id: _assign(subs, TAG_KEY_POOL, taken) for main_id, subs in sub_classes.items()}
    return KeyMap(main=main, tags=tags)
