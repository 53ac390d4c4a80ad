"""The Data page: imports from the server and from uploads, the taxonomy file, label exports."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path, PureWindowsPath

from sqlalchemy import Engine

from db.engine import reading, unit_of_work
from db.queries.taxonomy import apply_taxonomy_spec, taxonomy_spec
from labeller.app.services.common import Role, require_admin
from labeller.ingest import ImportReport
from labeller.project import Project
from labeller.recheck import RecheckReport

UPLOADS_FOLDER = "uploads"
NO_IMPORT_ROOTS = (
    "Importing from a server folder is off: an admin lists the folders it may read in import_roots under "
    "[access] in labeller.toml. Uploads work meanwhile."
)


class ImportRefused(ValueError):
    """A server folder the Data page may not import (off, outside the import roots, missing); the message says
    why without naming server paths."""


def import_folder_path(folder: str, roots: Sequence[str]) -> Path:
    """The folder to import, with symlinks and ``..`` resolved, if it lies inside one of ``roots`` (the
    project's ``import_roots``); a relative path is taken from the first root. The web user can type any
    path, and the server can read far more than the images meant for this project."""
    if not roots:
        raise ImportRefused(NO_IMPORT_ROOTS)
    text = folder.strip()
    if not text:
        raise ImportRefused("Type the path of a folder under the import roots.")
    resolved_roots = [Path(root).resolve() for root in roots]
    path = Path(text)
    resolved = (path if path.is_absolute() else resolved_roots[0] / path).resolve()
    if not any(resolved.is_relative_to(root) for root in resolved_roots):
        raise ImportRefused("That folder is outside the folders this project may import from (import_roots).")
    if not resolved.is_dir():
        raise ImportRefused("That path is not a folder on the server.")
    return resolved


def import_folder(project: Project, folder: str, *, labels_from_folders: bool, role: Role | None) -> ImportReport:
    """Import a folder on the server (the Data page's path box): admins only, inside the import roots only,
    and links inside it that lead out of the roots are skipped."""
    from labeller.ingest import ImportOptions, import_images

    require_admin(role, "import images")
    roots = project.settings.access.import_roots
    path = import_folder_path(folder, roots)
    options = ImportOptions(
        labels_from_folders=labels_from_folders, progress=False, within=tuple(Path(root) for root in roots)
    )
    return import_images(project, [path], options=options)


def import_uploads(project: Project, files: Sequence[tuple[str, bytes]], *, role: Role | None) -> ImportReport:
    """Save browser uploads under ``project/uploads/<time>/`` (inside the project, so they move with it)
    and import them (admins only). Names are reduced to their last component: an upload never writes
    elsewhere."""
    from labeller.ingest import ImportOptions, import_images

    require_admin(role, "import images")
    folder = project.root / UPLOADS_FOLDER / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    folder.mkdir(parents=True)
    for index, (name, data) in enumerate(files):
        save_upload(folder, name, data, index=index)
    return import_images(project, [folder], options=ImportOptions(progress=False))


def recheck_unreadable(project: Project, *, role: Role | None) -> RecheckReport:
    """The Data page's re-check (admins only): re-open every image marked unreadable and clear the marks of
    those whose file is back, as ``labeller import --recheck-unreadable`` does."""
    from labeller.recheck import recheck_unreadable as recheck

    require_admin(role, "re-check unreadable images")
    return recheck(project)


def unreadable_count(engine: Engine) -> int:
    from db.queries.unreadable import marked_image_ids

    with reading(engine) as session:
        return len(marked_image_ids(session))


def save_upload(folder: Path, name: str, data: bytes, *, index: int = 0) -> Path:
    """Write one upload into ``folder`` under its own name's last component, never over another file:
    several uploads may share a name (``x.png`` from two folders), so a taken name gets `` (2)``,
    `` (3)``... The file is created exclusively, so nothing already there is ever replaced."""
    # Browsers send a bare name, but a Windows path or a NUL must not reach the file system either.
    safe = PureWindowsPath(name.replace("\x00", "")).name
    safe = Path(safe).name if safe not in ("", ".", "..") else ""
    stem, suffix = (Path(safe).stem, Path(safe).suffix) if safe else (f"upload-{index}", "")
    for attempt in itertools.count(1):
        target = folder / (f"{stem}{suffix}" if attempt == 1 else f"{stem} ({attempt}){suffix}")
        try:
            with target.open("xb") as stream:
                stream.write(data)
            return target
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def taxonomy_toml(engine: Engine) -> str:
    from labeller.taxonomy_file import taxonomy_to_toml

    with reading(engine) as session:
        return taxonomy_to_toml(taxonomy_spec(session))


def apply_taxonomy_toml(engine: Engine, text: str, *, role: Role | None) -> list[str]:
    """Parse and apply an edited taxonomy (renames and merges keep every label); returns the changes.
    Admins only. Any problem raises before anything is written."""
    from labeller.taxonomy_file import parse_taxonomy_toml

    require_admin(role, "change the taxonomy")
    spec = parse_taxonomy_toml(text, source="the taxonomy editor")
    with unit_of_work(engine) as session:
        return apply_taxonomy_spec(session, spec).lines


def labels_csv(project: Project, *, role: Role | None) -> str:
    """Every labelled image's current label and provenance, in ``labeller export``'s CSV format (admins only:
    it holds every annotator's work)."""
    import io

    from labeller.export import iter_export_rows, write_csv

    require_admin(role, "export the labels")
    buffer = io.StringIO()
    write_csv(iter_export_rows(project), buffer)
    return buffer.getvalue()


def labels_jsonl(project: Project, *, role: Role | None) -> str:
    """The same rows as JSON lines."""
    import json
    from dataclasses import asdict

    from labeller.export import iter_export_rows

    require_admin(role, "export the labels")
    return "".join(json.dumps(asdict(row), ensure_ascii=False) + "\n" for row in iter_export_rows(project))
