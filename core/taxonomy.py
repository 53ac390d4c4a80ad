"""The label space the models see: leaves of a two-level taxonomy, and labels as sets of leaves.

A leaf is a sub-class, or a main class that has no sub-classes. Every human label becomes the set of
leaves it admits: "main class A, tag a2" admits one leaf; "main class A" alone admits all of A's leaves
(a partial label); "A, tags a1 and a3" admits those two; an unlabelled image admits every leaf.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class MainClassSpec:
    name: str
    sub_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    main_classes: tuple[MainClassSpec, ...]
    _leaf_index: dict[tuple[str, str | None], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.main_classes:
            raise ValueError("a taxonomy needs at least one main class")
        names = [m.name for m in self.main_classes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate main class names in {names}")
        index: dict[tuple[str, str | None], int] = {}
        for main in self.main_classes:
            if len(set(main.sub_classes)) != len(main.sub_classes):
                raise ValueError(f"duplicate sub-class names under {main.name!r}")
            for sub in main.sub_classes or (None,):
                index[(main.name, sub)] = len(index)
        object.__setattr__(self, "_leaf_index", index)

    @classmethod
    def from_dict(cls, mapping: dict[str, Sequence[str]]) -> Taxonomy:
        """``{"loops": ["0", "6", "8", "9"], "other": []}`` in display order."""
        return cls(tuple(MainClassSpec(name, tuple(subs)) for name, subs in mapping.items()))

    def to_dict(self) -> dict[str, list[str]]:
        return {m.name: list(m.sub_classes) for m in self.main_classes}

    @property
    def leaves(self) -> list[tuple[str, str | None]]:
        return list(self._leaf_index)

    @property
    def leaf_names(self) -> list[str]:
        return [main if sub is None else f"{main}/{sub}" for main, sub in self.leaves]

    @property
    def main_names(self) -> list[str]:
        return [m.name for m in self.main_classes]

    @property
    def num_leaves(self) -> int:
        return len(self._leaf_index)

    @property
    def num_main(self) -> int:
        return len(self.main_classes)

    def leaf_index(self, main: str, sub: str | None = None) -> int:
        try:
            return self._leaf_index[(main, sub)]
        except KeyError:
            raise KeyError(f"no leaf {main!r}/{sub!r} in the taxonomy") from None

    def main_of_leaf(self) -> np.ndarray:
        """Main-class index of every leaf, shape (K,)."""
        order = {name: i for i, name in enumerate(self.main_names)}
        return np.array([order[main] for main, _ in self.leaves], dtype=np.int64)

    def leaf_to_main_matrix(self) -> np.ndarray:
        """(K, M) 0/1 matrix: main-class probabilities are leaf probabilities @ this matrix."""
        matrix = np.zeros((self.num_leaves, self.num_main), dtype=np.float32)
        matrix[np.arange(self.num_leaves), self.main_of_leaf()] = 1.0
        return matrix

    def admissible(self, main: str | None, tags: Iterable[str] = ()) -> np.ndarray:
        """Boolean mask (K,) of the leaves a label admits; ``main=None`` means unlabelled."""
        mask = np.zeros(self.num_leaves, dtype=bool)
        if main is None:
            mask[:] = True
            return mask
        spec = next((m for m in self.main_classes if m.name == main), None)
        if spec is None:
            raise KeyError(f"no main class {main!r} in the taxonomy")
        tags = list(tags)
        if not spec.sub_classes:
            if tags:
                raise ValueError(f"{main!r} has no sub-classes, got tags {tags}")
            mask[self.leaf_index(main)] = True
            return mask
        for sub in tags or spec.sub_classes:
            mask[self.leaf_index(main, sub)] = True
        return mask
