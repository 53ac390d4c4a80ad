"""Annotators: the people (or importers) whose decisions the annotation history records."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.schema import Annotator, name_length_problem


class AnnotatorError(ValueError):
    """An annotator name or id that cannot be used; the message says why."""


def get_or_create_annotator(session: Session, name: str) -> Annotator:
    """The annotator called ``name`` (surrounding blanks ignored), created on first use."""
    clean_name = name.strip()
    if not clean_name:
        raise AnnotatorError("an annotator needs a non-empty name")
    query = select(Annotator).where(Annotator.name == clean_name)
    annotator = session.scalars(query).one_or_none()
    if annotator is not None:
        return annotator
    if problem := name_length_problem("the annotator name", clean_name):
        raise AnnotatorError(problem)
    # Two PostgreSQL sessions may create the same name at once: the loser's savepoint rolls back and it
    # reads the winner's row. (SQLite transactions are serialised by BEGIN IMMEDIATE.)
    try:
        with session.begin_nested():
            annotator = Annotator(name=clean_name)
            session.add(annotator)
        return annotator
    except IntegrityError:
        return session.scalars(query).one()


def annotator_by_id(session: Session, annotator_id: int) -> Annotator:
    annotator = session.get(Annotator, annotator_id)
    if annotator is None:
        raise AnnotatorError(f"no annotator with id {annotator_id}")
    return annotator


def list_annotators(session: Session) -> list[Annotator]:
    return list(session.scalars(select(Annotator).order_by(Annotator.name)))
