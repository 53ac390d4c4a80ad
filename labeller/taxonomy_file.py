"""The taxonomy file (TOML): the complete taxonomy wanted, in display order.

    [[main]]
    name = "loops"          # required
    key = "1"               # shortcut key in the app (optional; 'c' and 'r' are Streamlit's own)
    colour = "#1f77b4"      # optional
      [[main.sub]]
      name = "0"
      key = "q"

    [[main]]
    name = "no loops"
    renamed_from = "other"  # rename a stored class: its labels follow

    [[main]]
    name = "scribbles"
    merge_into = "no loops" # merge a stored class into another: its annotations and sub-classes move

A sub-class may be renamed (``renamed_from``) or merged into a sibling (``merge_into``) the same way.
A stored class that has labels and is missing from the file is an error, so no edit loses a label.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from db.queries.taxonomy import MainClassEntry, SubClassEntry, TaxonomyError, TaxonomySpec
from labeller.files import FileRefused, read_regular

# A taxonomy of 10,000 classes with keys and colours is under 1 MB.
MAX_TAXONOMY_BYTES = 1024 * 1024

_MAIN_FIELDS = {"name", "key", "colour", "renamed_from", "merge_into", "sub"}
_SUB_FIELDS = {"name", "key", "colour", "renamed_from", "merge_into"}


def parse_taxonomy_toml(text: str, *, source: str = "taxonomy file") -> TaxonomySpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TaxonomyError(f"{source}: not valid TOML: {error}") from error
    unknown = set(data) - {"main"}
    if unknown:
        raise TaxonomyError(f"{source}: unknown top-level keys {sorted(unknown)} (expected [[main]] tables)")
    mains = data.get("main")
    if not isinstance(mains, list) or not mains:
        raise TaxonomyError(f"{source}: no [[main]] tables")
    return TaxonomySpec(tuple(_main_entry(table, f"{source}: [[main]] #{i + 1}") for i, table in enumerate(mains)))


def read_taxonomy_file(path: Path) -> TaxonomySpec:
    """A regular file of at most MAX_TAXONOMY_BYTES (a 3 GB sparse file took 5-6 GB of memory, a FIFO hung)."""
    try:
        text = read_regular(path, max_bytes=MAX_TAXONOMY_BYTES).decode("utf-8")
        text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text mode reads
    except FileRefused as error:
        raise TaxonomyError(f"cannot read {path}: {error.reason}") from error
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise TaxonomyError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} on line {line}); save it as UTF-8"
        ) from error
    return parse_taxonomy_toml(text, source=str(path))


def app_key_problems(spec: TaxonomySpec) -> list[str]:
    """Keys the Label page could not use as the file says (it would put another key in their place): not one
    letter or digit, or one of the page's own keys (skip, unsure, undo, reveal, help) or Streamlit's.
    (Duplicates and Streamlit's keys are refused by ``db.queries.taxonomy.validate_spec`` too.)"""
    from labeller.app.keys import PAGE_KEYS, STREAMLIT_RESERVED

    page = {
        PAGE_KEYS.skip: "skip",
        PAGE_KEYS.unsure: "unsure",
        PAGE_KEYS.undo: "undo",
        PAGE_KEYS.reveal: "reveal",
        PAGE_KEYS.help: "help",
    }
    page = {key.lower(): action for key, action in page.items()}
    problems = []
    classes = [(f"main class {main.name!r}", main.key) for main in spec.surviving_mains]
    classes += [
        (f"sub-class {main.name}/{sub.name}", sub.key) for main in spec.surviving_mains for sub in main.surviving_subs
    ]
    for what, key in classes:
        if key is None:
            continue
        lowered = key.strip().lower()
        if len(lowered) != 1 or not lowered.isalnum():
            problems.append(f"{what}: key {key!r} must be one letter or digit")
        elif lowered in page:
            problems.append(f"{what}: key {key!r} is the Label page's {page[lowered]} key")
        elif lowered in STREAMLIT_RESERVED:
            problems.append(f"{what}: key {key!r} is reserved by Streamlit")
    return problems


def _main_entry(table: Any, where: str) -> MainClassEntry:
    fields = _fields(table, _MAIN_FIELDS, where)
    subs = table.get("sub", [])
    if not isinstance(subs, list):
        raise TaxonomyError(f"{where}: 'sub' must be a list of [[main.sub]] tables")
    return MainClassEntry(
        **fields,
        sub_classes=tuple(_sub_entry(sub, f"{where} ({fields['name']!r}) sub #{j + 1}") for j, sub in enumerate(subs)),
    )


def _sub_entry(table: Any, where: str) -> SubClassEntry:
    return SubClassEntry(**_fields(table, _SUB_FIELDS, where))


def _fields(table: Any, allowed: set[str], where: str) -> dict[str, str | None]:
    if not isinstance(table, dict):
        raise TaxonomyError(f"{where}: expected a table")
    unknown = set(table) - allowed
    if unknown:
        raise TaxonomyError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    if "name" not in table:
        raise TaxonomyError(f"{where}: 'name' is required")
    fields: dict[str, str | None] = {}
    for key in allowed - {"sub"}:
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            # TOML reads key = 1 as an integer; shortcut keys are text.
            if key == "key" and isinstance(value, int):
                value = str(value)
            else:
                raise TaxonomyError(f"{where}: {key!r} must be a string, got {value!r}")
        fields[key] = value
    return fields


def taxonomy_to_toml(spec: TaxonomySpec) -> str:
    """The spec as a taxonomy file (renames and merges are one-off edits, so they are not written)."""
    blocks = []
    for main in spec.surviving_mains:
        lines = ["[[main]]", *_toml_fields(main.name, main.key, main.colour, indent="")]
        for sub in main.surviving_subs:
            lines += ["  [[main.sub]]", *_toml_fields(sub.name, sub.key, sub.colour, indent="  ")]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _toml_fields(name: str, key: str | None, colour: str | None, *, indent: str) -> list[str]:
    values = {"name": name, "key": key, "colour": colour}
    # tomli_w quotes and escapes each value; the [[main]] / [[main.sub]] layout is written by hand.
    return [indent + tomli_w.dumps({k: v}).strip() for k, v in values.items() if v is not None]
