"""Taxonomy merges and renames, recorded so that they can be undone (issue 12 item 4).

``apply_taxonomy_spec`` appends one ``taxonomy_changes`` row per edit that renamed or merged classes, with
what an undo needs: the merged classes' names, keys, colours and positions, and the ids of the annotations
whose main class or tag moved (and of those that lost a duplicate tag). ``undo_change`` reverts the newest
change not undone yet: it recreates the merged classes, moves exactly those annotations and tags back and
renames back, then appends its own row (``undo_of``). The history is never edited.

Predictions that a merge moved stay on the merged class until the next scoring (they are a model's output,
re-made by the next score job).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session, aliased

from db.queries.taxonomy import TaxonomyChanges, TaxonomyError
from db.schema import Annotation, AnnotationTag, MainClass, SubClass, TaxonomyChange

_CHUNK = 5_000  # ids per IN (...): well under SQLite's and PostgreSQL's parameter limits


@dataclass(frozen=True)
class ChangeView:
    id: int
    created_at: datetime
    summary: str
    undo_of: int | None
    undone_by: int | None


def record_change(session: Session, changes: TaxonomyChanges) -> TaxonomyChange:
    row = TaxonomyChange(
        summary="\n".join(changes.lines),
        details={"renames": changes.renames, "merges": changes.merges, "settings": changes.settings},
    )
    session.add(row)
    session.flush()
    return row


def history(session: Session) -> list[ChangeView]:
    """Every recorded change, newest first, with the undo that reverted it (if any)."""
    undo = aliased(TaxonomyChange)
    rows = session.execute(
        select(TaxonomyChange, undo.id)
        .outerjoin(undo, undo.undo_of == TaxonomyChange.id)
        .order_by(TaxonomyChange.id.desc())
    ).all()
    return [ChangeView(row.id, row.created_at, row.summary, row.undo_of, undone_by) for row, undone_by in rows]


def _newest_undoable(session: Session) -> TaxonomyChange | None:
    undos = aliased(TaxonomyChange)
    query = (
        select(TaxonomyChange)
        .where(TaxonomyChange.undo_of.is_(None), ~exists().where(undos.undo_of == TaxonomyChange.id))
        .order_by(TaxonomyChange.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def undo_change(session: Session, change_id: int | None = None) -> TaxonomyChange:
    """Revert the newest change not undone yet (``change_id``, when given, must name it); returns the undo's
    row, whose ``summary`` says what was done. Raises :class:`TaxonomyError` and changes nothing when the
    classes have changed since in a way that prevents it (a restored name taken, a class gone)."""
    change = _newest_undoable(session)
    if change is None:
        raise TaxonomyError("no taxonomy merge or rename to undo")
    if change_id is not None and change_id != change.id:
        raise TaxonomyError(
            f"only the newest change not undone yet can be undone: that is {change.id}, not {change_id}"
        )
    lines: list[str] = []
    details = change.details or {}
    merges = list(details.get("merges", []))
    renames = list(details.get("renames", []))
    # Apply in the reverse order of apply_taxonomy_spec: sub-class merges and renames, then main classes.
    for record in reversed([m for m in merges if m["level"] == "sub"]):
        _unmerge_sub(session, record, lines)
    for record in reversed([r for r in renames if r["level"] == "sub"]):
        _rename_back(session, SubClass, record, lines)
    for record in reversed([m for m in merges if m["level"] == "main"]):
        _unmerge_main(session, record, lines)
    for record in reversed([r for r in renames if r["level"] == "main"]):
        _rename_back(session, MainClass, record, lines)
    for record in details.get("settings", []):
        row = session.get(MainClass if record["level"] == "main" else SubClass, record["id"])
        if row is not None:
            row.shortcut, row.colour = record["key"], record["colour"]
    session.flush()
    undo = TaxonomyChange(summary="\n".join(lines), details={}, undo_of=change.id)
    session.add(undo)
    session.flush()
    return undo


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield list(ids[start : start + _CHUNK])


def _rename_back(
    session: Session, model: type[MainClass] | type[SubClass], record: dict[str, Any], lines: list[str]
) -> None:
    row = session.get(model, record["id"])
    kind = "main class" if model is MainClass else "sub-class"
    if row is None or row.name != record["to"]:
        raise TaxonomyError(f"cannot undo: {kind} {record['to']!r} was changed or removed since")
    if model is MainClass:
        clash = session.scalar(select(MainClass.id).where(MainClass.name == record["from"]))
    else:
        clash = session.scalar(
            select(SubClass.id).where(SubClass.main_class_id == row.main_class_id, SubClass.name == record["from"])
        )
    if clash is not None:
        raise TaxonomyError(f"cannot undo: the name {record['from']!r} is taken by another {kind}")
    row.name = record["from"]
    session.flush()
    lines.append(f"renamed {kind} {record['to']!r} back to {record['from']!r}")


def _free_key(key: str | None, taken: set[str]) -> str | None:
    return key if key is not None and key.lower() not in taken else None


def _restore_sub(session: Session, main: MainClass, settings: dict[str, Any]) -> SubClass:
    if any(sub.name == settings["name"] for sub in main.sub_classes):
        raise TaxonomyError(f"cannot undo: {main.name} already has a sub-class {settings['name']!r}")
    taken = {k.lower() for k in session.scalars(select(MainClass.shortcut)) if k}
    taken |= {sub.shortcut.lower() for sub in main.sub_classes if sub.shortcut}
    row = SubClass(
        name=settings["name"],
        shortcut=_free_key(settings.get("key"), taken),
        colour=settings.get("colour"),
        position=settings.get("position", len(main.sub_classes)),
    )
    main.sub_classes.append(row)
    session.flush()
    return row


def _move_tags_back(session: Session, record: dict[str, Any], restored: SubClass) -> int:
    moved = 0
    for ids in _chunks(record.get("annotation_ids", [])):
        moved += session.execute(
            update(AnnotationTag)
            .where(AnnotationTag.annotation_id.in_(ids), AnnotationTag.sub_class_id == record["target_id"])
            .values(sub_class_id=restored.id)
        ).rowcount
    for ids in _chunks(record.get("duplicate_ids", [])):
        present = set(session.scalars(select(Annotation.id).where(Annotation.id.in_(ids))))
        session.add_all(AnnotationTag(annotation_id=i, sub_class_id=restored.id) for i in ids if i in present)
        moved += len(present)
    session.flush()
    return moved


def _unmerge_sub(session: Session, record: dict[str, Any], lines: list[str]) -> None:
    main = session.get(MainClass, record["main_id"])
    if main is None:
        raise TaxonomyError(f"cannot undo: the main class of sub-class {record['source']['name']!r} is gone")
    restored = _restore_sub(session, main, record["source"])
    moved = _move_tags_back(session, record, restored)
    lines.append(f"restored sub-class {main.name}/{restored.name} ({moved} tags moved back)")


def _unmerge_main(session: Session, record: dict[str, Any], lines: list[str]) -> None:
    settings = record["source"]
    target = session.get(MainClass, record["target_id"])
    if target is None:
        raise TaxonomyError(f"cannot undo: the class {settings['name']!r} was merged into is gone")
    if session.scalar(select(MainClass.id).where(MainClass.name == settings["name"])) is not None:
        raise TaxonomyError(f"cannot undo: a main class {settings['name']!r} exists again")
    taken = {k.lower() for k in session.scalars(select(MainClass.shortcut)) if k}
    restored = MainClass(
        name=settings["name"],
        shortcut=_free_key(settings.get("key"), taken),
        colour=settings.get("colour"),
        position=settings.get("position", 0),
    )
    session.add(restored)
    session.flush()
    moved = 0
    for ids in _chunks(record.get("annotation_ids", [])):
        moved += session.execute(
            update(Annotation)
            .where(Annotation.id.in_(ids), Annotation.main_class_id == target.id)
            .values(main_class_id=restored.id)
        ).rowcount
    for sub_id in record.get("reparented_sub_ids", []):
        sub = session.get(SubClass, sub_id)
        if sub is not None and sub.main_class_id == target.id:
            sub.main_class = restored
    session.flush()
    session.expire(restored, ["sub_classes"])
    session.expire(target, ["sub_classes"])
    for sub_record in record.get("merged_subs", []):
        _move_tags_back(session, sub_record, _restore_sub(session, restored, sub_record["source"]))
    lines.append(f"restored main class {restored.name!r} ({moved} annotations moved back from {target.name!r})")
