"""The taxonomy in the database: main classes, their sub-classes, and edits that never lose a label.

A :class:`TaxonomySpec` describes the *complete* taxonomy wanted after an edit. Applying it creates new
classes, updates keys, colours and order, renames (``renamed_from``) and merges (``merge_into``): a merge
moves every annotation and tag of the merged class onto its target, so history rows stay and only point
elsewhere. A class that has annotations and is missing from the spec is an error, never a silent delete.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, selectinload

from db.schema import Annotation, AnnotationTag, MainClass, Prediction, SubClass, name_length_problem

ClassRow = TypeVar("ClassRow", MainClass, SubClass)

# Streamlit binds these keys itself ("c" clears the cache, "r" reruns the script).
RESERVED_KEYS = frozenset({"c", "r"})


class TaxonomyError(ValueError):
    """A taxonomy spec that cannot be applied; the message lists every problem found."""


@dataclass(frozen=True)
class SubClassEntry:
    name: str
    key: str | None = None
    colour: str | None = None
    renamed_from: str | None = None
    merge_into: str | None = None  # a sibling sub-class of the same main class


@dataclass(frozen=True)
class MainClassEntry:
    name: str
    key: str | None = None
    colour: str | None = None
    renamed_from: str | None = None
    merge_into: str | None = None  # another main class of the spec
    sub_classes: tuple[SubClassEntry, ...] = ()

    @property
    def surviving_subs(self) -> tuple[SubClassEntry, ...]:
        return tuple(sub for sub in self.sub_classes if sub.merge_into is None)


@dataclass(frozen=True)
class TaxonomySpec:
    main_classes: tuple[MainClassEntry, ...]

    @property
    def surviving_mains(self) -> tuple[MainClassEntry, ...]:
        return tuple(main for main in self.main_classes if main.merge_into is None)

    def to_mapping(self) -> dict[str, list[str]]:
        return {main.name: [sub.name for sub in main.surviving_subs] for main in self.surviving_mains}


@dataclass
class TaxonomyChanges:
    """What applying a spec did, one line per change, for the command line to print."""

    lines: list[str] = field(default_factory=list)
    # What ``db.queries.taxonomy_history`` needs to undo the renames and merges (ids, moved rows).
    renames: list[dict[str, Any]] = field(default_factory=list)
    merges: list[dict[str, Any]] = field(default_factory=list)
    settings: list[dict[str, Any]] = field(default_factory=list)  # keys and colours before the edit

    def add(self, line: str) -> None:
        self.lines.append(line)


# --- reading -----------------------------------------------------------------------------------------


def list_main_classes(session: Session) -> list[MainClass]:
    """Main classes in display order, their sub-classes loaded (also in display order)."""
    statement = (
        select(MainClass).options(selectinload(MainClass.sub_classes)).order_by(MainClass.position, MainClass.id)
    )
    return list(session.scalars(statement))


def taxonomy_mapping(session: Session) -> dict[str, list[str]]:
    """``{main: [sub, ...]}`` in display order; feeds ``core.taxonomy.Taxonomy.from_dict``."""
    return {main.name: [sub.name for sub in main.sub_classes] for main in list_main_classes(session)}


def taxonomy_spec(session: Session) -> TaxonomySpec:
    """The stored taxonomy as a spec (names, keys, colours): what ``--show`` prints and a file can start from."""
    return TaxonomySpec(
        tuple(
            MainClassEntry(
                name=main.name,
                key=main.shortcut,
                colour=main.colour,
                sub_classes=tuple(SubClassEntry(sub.name, sub.shortcut, sub.colour) for sub in main.sub_classes),
            )
            for main in list_main_classes(session)
        )
    )


def main_class_by_name(session: Session, name: str) -> MainClass | None:
    return session.scalar(select(MainClass).where(MainClass.name == name))


def sub_class_by_name(session: Session, main_name: str, sub_name: str) -> SubClass | None:
    statement = select(SubClass).join(MainClass).where(MainClass.name == main_name, SubClass.name == sub_name)
    return session.scalar(statement)


def ensure_class(session: Session, main_name: str, sub_name: str | None = None) -> tuple[MainClass, SubClass | None]:
    """The named main class (and sub-class), created at the end of the display order when missing."""
    main = main_class_by_name(session, main_name)
    if main is None:
        if problem := name_length_problem("main class", main_name):
            raise TaxonomyError(problem)
        position = session.scalar(select(func.coalesce(func.max(MainClass.position) + 1, 0)))
        main = MainClass(name=main_name, position=position)
        session.add(main)
        session.flush()
    if sub_name is None:
        return main, None
    sub = next((s for s in main.sub_classes if s.name == sub_name), None)
    if sub is None:
        if problem := name_length_problem(f"sub-class of {main_name[:40]!r}", sub_name):
            raise TaxonomyError(problem)
        sub = SubClass(name=sub_name, position=len(main.sub_classes))
        main.sub_classes.append(sub)
        session.flush()
    return main, sub


# --- validation --------------------------------------------------------------------------------------


def validate_spec(spec: TaxonomySpec) -> None:
    """Problems visible in the spec alone: names, keys, merge targets. Raises :class:`TaxonomyError`."""
    problems: list[str] = []
    if not spec.surviving_mains:
        problems.append("the taxonomy needs at least one main class")
    entry_names = [main.name for main in spec.main_classes]
    surviving_names = {main.name for main in spec.surviving_mains}
    problems += [f"main class {name!r} appears {n} times" for name, n in Counter(entry_names).items() if n > 1]
    main_keys: dict[str, str] = {}
    for main in spec.main_classes:
        if not main.name.strip():
            problems.append("a main class has an empty name")
        if "/" in main.name:
            problems.append(f"main class {main.name!r}: '/' is not allowed in a name")
        if problem := name_length_problem("main class", main.name):
            problems.append(problem)
        if main.merge_into is not None:
            if main.merge_into not in surviving_names:
                problems.append(
                    f"main class {main.name!r}: merge_into names no main class of the file ({main.merge_into!r})"
                )
            if main.renamed_from or main.sub_classes or main.key:
                problems.append(f"main class {main.name!r} is merged: give it only a name and merge_into")
            continue
        problems += _key_problems(f"main class {main.name!r}", main.key, main_keys)
        problems += _sub_problems(main, main_keys)
    renamed = [main.renamed_from for main in spec.main_classes if main.renamed_from]
    problems += [f"main class {name!r} is renamed twice" for name, n in Counter(renamed).items() if n > 1]
    if problems:
        raise TaxonomyError("invalid taxonomy:\n  " + "\n  ".join(problems))


def _key_problems(what: str, key: str | None, taken: dict[str, str]) -> list[str]:
    if key is None:
        return []
    lowered = key.strip().lower()
    if not lowered:
        return [f"{what}: empty key"]
    if lowered in RESERVED_KEYS:
        return [f"{what}: key {key!r} is reserved by Streamlit (reserved: {', '.join(sorted(RESERVED_KEYS))})"]
    if lowered in taken:
        return [f"{what}: key {key!r} is already used by {taken[lowered]}"]
    taken[lowered] = what
    return []


def _sub_problems(main: MainClassEntry, main_keys: dict[str, str]) -> list[str]:
    problems: list[str] = []
    names = [sub.name for sub in main.sub_classes]
    surviving = {sub.name for sub in main.surviving_subs}
    problems += [f"sub-class {main.name}/{name} appears {n} times" for name, n in Counter(names).items() if n > 1]
    # Sub-class keys are live only once their main class is chosen, so they may repeat across main classes,
    # but never clash with a main-class key.
    sub_keys = {key: what for key, what in main_keys.items()}
    for sub in main.sub_classes:
        what = f"sub-class {main.name}/{sub.name}"
        if not sub.name.strip():
            problems.append(f"main class {main.name!r} has a sub-class with an empty name")
        if "/" in sub.name:
            problems.append(f"{what}: '/' is not allowed in a name")
        if problem := name_length_problem(f"sub-class of {main.name[:40]!r}", sub.name):
            problems.append(problem)
        if sub.merge_into is not None:
            if sub.merge_into not in surviving:
                problems.append(f"{what}: merge_into names no sub-class of {main.name!r} ({sub.merge_into!r})")
            if sub.renamed_from or sub.key:
                problems.append(f"{what} is merged: give it only a name and merge_into")
            continue
        problems += _key_problems(what, sub.key, sub_keys)
    renamed = [sub.renamed_from for sub in main.sub_classes if sub.renamed_from]
    problems += [f"sub-class {main.name}/{name} is renamed twice" for name, n in Counter(renamed).items() if n > 1]
    return problems


# --- applying ----------------------------------------------------------------------------------------


def _note_settings(
    what: str, row: MainClass | SubClass, key: str | None, colour: str | None, changes: TaxonomyChanges
) -> None:
    """Say so when a file changes only a class's key or colour (it is applied like any other change)."""
    if row.shortcut != key or row.colour != colour:
        level = "main" if isinstance(row, MainClass) else "sub"
        changes.settings.append({"level": level, "id": row.id, "key": row.shortcut, "colour": row.colour})
    if row.shortcut != key:
        changes.add(f"{what}: key {row.shortcut or 'none'} -> {key or 'none'}")
    if row.colour != colour:
        changes.add(f"{what}: colour {row.colour or 'none'} -> {colour or 'none'}")


def apply_taxonomy_spec(session: Session, spec: TaxonomySpec) -> TaxonomyChanges:
    """Make the stored taxonomy equal to ``spec``; the caller's unit of work commits or rolls back all of it."""
    validate_spec(spec)
    changes = TaxonomyChanges()
    existing = {main.name: main for main in list_main_classes(session)}

    targets = _resolve([(m.name, m.renamed_from) for m in spec.surviving_mains], existing, kind="main class")
    merged_sources = {m.name: m.merge_into for m in spec.main_classes if m.merge_into is not None}
    _check_claims(existing, targets, merged_sources, session, changes)

    _park_names(session, targets.values())

    rows: dict[str, MainClass] = {}
    for position, entry in enumerate(spec.surviving_mains):
        row = targets[entry.name]
        if row is None:
            row = MainClass(name=entry.name)
            session.add(row)
            changes.add(f"added main class {entry.name!r}")
        else:
            if entry.renamed_from and entry.renamed_from != entry.name:
                changes.add(f"renamed main class {entry.renamed_from!r} -> {entry.name!r}")
                changes.renames.append({"level": "main", "id": row.id, "from": entry.renamed_from, "to": entry.name})
            _note_settings(f"main class {entry.name!r}", row, entry.key, entry.colour, changes)
        row.name, row.shortcut, row.colour, row.position = entry.name, entry.key, entry.colour, position
        rows[entry.name] = row
    session.flush()

    for source_name, target_name in merged_sources.items():
        _merge_main(session, existing[source_name], rows[target_name], changes)

    for entry in spec.surviving_mains:
        _apply_subs(session, rows[entry.name], entry, changes)
    if changes.renames or changes.merges:
        from db.queries.taxonomy_history import record_change

        record_change(session, changes)
    return changes


def _resolve(
    entries: Sequence[tuple[str, str | None]], existing: dict[str, ClassRow], *, kind: str
) -> dict[str, ClassRow | None]:
    """Entry name -> the stored row it continues (same name, or ``renamed_from``), or None for a new class."""
    problems: list[str] = []
    resolved: dict[str, ClassRow | None] = {}
    renamed_away = {renamed_from for _, renamed_from in entries if renamed_from}
    for name, renamed_from in entries:
        if renamed_from is None:
            resolved[name] = existing.get(name)
        elif renamed_from not in existing:
            problems.append(f"{kind} {name!r}: renamed_from names no stored {kind} ({renamed_from!r})")
        elif name in existing and name != renamed_from and name not in renamed_away:
            problems.append(f"cannot rename {kind} {renamed_from!r} to {name!r}: {name!r} exists (merge it instead)")
        else:
            resolved[name] = existing[renamed_from]
    claimed = [row.id for row in resolved.values() if row is not None]
    if len(claimed) != len(set(claimed)):
        problems.append(f"one stored {kind} is claimed by two entries (a name kept and also renamed)")
    if problems:
        raise TaxonomyError("cannot apply the taxonomy:\n  " + "\n  ".join(problems))
    return resolved


def _check_claims(
    existing: dict[str, MainClass],
    targets: dict[str, MainClass | None],
    merged_sources: dict[str, str],
    session: Session,
    changes: TaxonomyChanges,
) -> None:
    problems = [
        f"main class {name!r}: merge_into is given but no stored main class has that name"
        for name in merged_sources
        if name not in existing
    ]
    kept_ids = {row.id for row in targets.values() if row is not None}
    for name in merged_sources:
        if name in existing and existing[name].id in kept_ids:
            problems.append(f"main class {name!r} is both kept and merged")
    claimed = kept_ids | {existing[name].id for name in merged_sources if name in existing}
    for name, row in existing.items():
        if row.id in claimed:
            continue
        used = _main_usage(session, row)
        if used:
            problems.append(
                f"main class {name!r} has {used} annotations or tags and is missing from the file: "
                "keep it, rename it (renamed_from) or merge it (merge_into)"
            )
        else:
            session.delete(row)
            changes.add(f"removed unused main class {name!r}")
    if problems:
        raise TaxonomyError("cannot apply the taxonomy:\n  " + "\n  ".join(problems))


def _main_usage(session: Session, main: MainClass) -> int:
    annotations = (
        session.scalar(select(func.count()).select_from(Annotation).where(Annotation.main_class_id == main.id)) or 0
    )
    return annotations + sum(_sub_usage(session, sub) for sub in main.sub_classes)


def _sub_usage(session: Session, sub: SubClass) -> int:
    return (
        session.scalar(select(func.count()).select_from(AnnotationTag).where(AnnotationTag.sub_class_id == sub.id)) or 0
    )


def _merge_main(session: Session, source: MainClass, target: MainClass, changes: TaxonomyChanges) -> None:
    """Annotations of ``source`` move to ``target``; its sub-classes move too, merging with same-named ones."""
    target_subs = {sub.name: sub for sub in target.sub_classes}
    record: dict[str, Any] = {
        "level": "main",
        "source": _class_settings(source),
        "target_id": target.id,
        "annotation_ids": list(session.scalars(select(Annotation.id).where(Annotation.main_class_id == source.id))),
        "reparented_sub_ids": [],
        "merged_subs": [],
    }
    for sub in list(source.sub_classes):
        if sub.name in target_subs:
            sub_record = {"source": _class_settings(sub), "target_id": target_subs[sub.name].id}
            _move_tags(session, sub, target_subs[sub.name], sub_record)
            record["merged_subs"].append(sub_record)
            source.sub_classes.remove(sub)  # delete-orphan removes the emptied row
        else:
            record["reparented_sub_ids"].append(sub.id)
            sub.position = len(target.sub_classes)
            sub.main_class = target
    session.flush()
    changes.merges.append(record)
    moved = session.execute(
        update(Annotation).where(Annotation.main_class_id == source.id).values(main_class_id=target.id)
    ).rowcount
    session.execute(update(Prediction).where(Prediction.main_class_id == source.id).values(main_class_id=target.id))
    session.delete(source)
    session.flush()
    session.expire(target, ["sub_classes"])
    changes.add(f"merged main class {source.name!r} into {target.name!r} ({moved} annotations moved)")


def _class_settings(row: MainClass | SubClass) -> dict[str, Any]:
    return {"name": row.name, "key": row.shortcut, "colour": row.colour, "position": row.position}


def _move_tags(session: Session, source: SubClass, target: SubClass, record: dict[str, Any]) -> int:
    """Re-point tags from ``source`` to ``target``; an annotation tagged with both keeps one tag. ``record``
    gets the annotations whose tag moved and those that lost their duplicate tag, for an undo."""
    already_tagged = select(AnnotationTag.annotation_id).where(AnnotationTag.sub_class_id == target.id)
    of_source = select(AnnotationTag.annotation_id).where(AnnotationTag.sub_class_id == source.id)
    record["duplicate_ids"] = list(session.scalars(of_source.where(AnnotationTag.annotation_id.in_(already_tagged))))
    record["annotation_ids"] = list(
        session.scalars(of_source.where(AnnotationTag.annotation_id.not_in(already_tagged)))
    )
    session.execute(
        delete(AnnotationTag).where(
            AnnotationTag.sub_class_id == source.id, AnnotationTag.annotation_id.in_(already_tagged)
        )
    )
    moved = session.execute(
        update(AnnotationTag).where(AnnotationTag.sub_class_id == source.id).values(sub_class_id=target.id)
    ).rowcount
    session.execute(update(Prediction).where(Prediction.sub_class_id == source.id).values(sub_class_id=target.id))
    return moved


def _apply_subs(session: Session, main: MainClass, entry: MainClassEntry, changes: TaxonomyChanges) -> None:
    existing = {sub.name: sub for sub in main.sub_classes}
    targets = _resolve(
        [(s.name, s.renamed_from) for s in entry.surviving_subs], existing, kind=f"sub-class of {main.name!r}"
    )
    merged = {s.name: s.merge_into for s in entry.sub_classes if s.merge_into is not None}
    problems = [
        f"sub-class {main.name}/{name}: merge_into is given but no stored sub-class has that name"
        for name in merged
        if name not in existing
    ]
    kept_ids = {row.id for row in targets.values() if row is not None}
    claimed = kept_ids | {existing[name].id for name in merged if name in existing}
    for name, row in existing.items():
        if row.id in claimed:
            continue
        if used := _sub_usage(session, row):
            problems.append(
                f"sub-class {main.name}/{name} has {used} tags and is missing from the file: "
                "keep it, rename it (renamed_from) or merge it (merge_into)"
            )
        else:
            main.sub_classes.remove(row)
            changes.add(f"removed unused sub-class {main.name}/{name}")
    if problems:
        raise TaxonomyError("cannot apply the taxonomy:\n  " + "\n  ".join(problems))

    _park_names(session, targets.values())
    rows: dict[str, SubClass] = {}
    for position, sub_entry in enumerate(entry.surviving_subs):
        row = targets[sub_entry.name]
        if row is None:
            row = SubClass(name=sub_entry.name)
            main.sub_classes.append(row)
            changes.add(f"added sub-class {main.name}/{sub_entry.name}")
        else:
            if sub_entry.renamed_from and sub_entry.renamed_from != sub_entry.name:
                changes.add(f"renamed sub-class {main.name}/{sub_entry.renamed_from} -> {sub_entry.name}")
                changes.renames.append(
                    {"level": "sub", "id": row.id, "from": sub_entry.renamed_from, "to": sub_entry.name}
                )
            _note_settings(f"sub-class {main.name}/{sub_entry.name}", row, sub_entry.key, sub_entry.colour, changes)
        row.name, row.shortcut, row.colour, row.position = sub_entry.name, sub_entry.key, sub_entry.colour, position
        rows[sub_entry.name] = row
    session.flush()
    for source_name, target_name in merged.items():
        source = existing[source_name]
        sub_record: dict[str, Any] = {
            "level": "sub",
            "main_id": main.id,
            "source": _class_settings(source),
            "target_id": rows[target_name].id,
        }
        moved = _move_tags(session, source, rows[target_name], sub_record)
        changes.merges.append(sub_record)
        main.sub_classes.remove(source)
        changes.add(f"merged sub-class {main.name}/{source_name} into {main.name}/{target_name} ({moved} tags moved)")
    session.flush()


def _park_names(session: Session, rows: Iterable[MainClass | SubClass | None]) -> None:
    """Names are unique: park every kept class under a temporary name first, so that swaps and renames
    onto a name freed in the same edit do not trip the constraint half-way."""
    for row in rows:
        if row is not None:
            row.name = f"/renaming/{row.id}"  # "/" is never in a real name
    session.flush()
