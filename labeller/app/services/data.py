"""The Data page: imports from the server and from uploads, the taxonomy file, label exports."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path, PureWindowsPath

from sqlalchemy import Engine

from db.engine import reading, unit_of_work
from db.queries.taxonomy import apply_taxonomy_spec, taxonomy_spec
from labeller.ingest import ImportReport
from labeller.project import Project

UPLOADS_FOLDER = "uploads"


def import_folder(project: Project, folder: str, *, labels_from_folders: bool) -> ImportReport:
    """Import a folder on the server (the Data page's path box)."""
    from labeller.ingest import ImportOptions, import_images

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder on the server")
    options = ImportOptions(labels_from_folders=labels_from_folders, progress=False)
    return import_images(project, [path], options=options)


def import_uploads(project: Project, files: Sequence[tuple[str, bytes]]) -> ImportReport:
    """Save browser uploads under ``project/uploads/<time>/`` (inside the project, so they move with it)
    and import them. Names are reduced to their last component: an upload never writes elsewhere."""
    from labeller.ingest import ImportOptions, import_images

    folder = project.root / UPLOADS_FOLDER / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    folder.mkdir(parents=True)
    for index, (name, data) in enumerate(files):
        save_upload(folder, name, data, index=index)
    return import_images(project, [folder], options=ImportOptions(progress=False))


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


def apply_taxonomy_toml(engine: Engine, text: str) -> list[str]:
    """Parse and apply an edited taxonomy (renames and merges keep every label); returns the changes.
    Any problem raises before anything is written."""
    from labeller.taxonomy_file import parse_taxonomy_toml

    spec = parse_taxonomy_toml(text, source="the taxonomy editor")
    with unit_of_work(engine) as session:
        return apply_taxonomy_spec(session, spec).lines


def labels_csv(project: Project) -> str:
    """Every labelled image's current label and provenance, in ``labeller export``'s CSV format."""
    import io

    from labeller.export import iter_export_rows, write_csv

    buffer = io.StringIO()
    write_csv(iter_export_rows(project), buffer)
    return buffer.getvalue()


def labels_jsonl(project: Project) -> str:
    """The same rows as JSON lines."""
    import json
    from dataclasses import asdict

    from labeller.export import iter_export_rows

    return "".join(json.dumps(asdict(row), ensure_ascii=False) + "\n" for row in iter_export_rows(project))
