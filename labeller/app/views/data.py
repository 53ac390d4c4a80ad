"""Data: import images (a folder on the server or a browser upload), edit the taxonomy, see the counts,
download the labels."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import streamlit as st

from db.queries.taxonomy import TaxonomyError
from labeller.app import state
from labeller.app.components import key_table
from labeller.app.services import common, data
from labeller.app.text import md_text
from labeller.ingest import ImportDiskFull, ImportReport

project = state.current_project()
engine = project.engine
state.require_identity()
role = state.role(project)
# Skipped files are shown relative to an import root or the project: never where they are on the server.
shown_under = [Path(root) for root in project.settings.access.import_roots] + [project.root]
SKIPPED_IN_FULL = 100  # skipped files listed with their whole reason; more go in a scrolling table


def show_report(report: ImportReport, bases: Sequence[Path]) -> None:
    st.success(
        f"Added {report.added} images ({report.duplicates} duplicates, {report.labelled} pre-labelled) "
        f"in {report.seconds:.1f} s."
    )
    if report.skipped:
        count = len(report.skipped)
        with st.expander(f"{count} file{'' if count == 1 else 's'} skipped", expanded=count <= 5):
            table = pd.DataFrame(
                {
                    "file": [common.public_path(s.path, bases) for s in report.skipped],
                    "reason": [common.public_message(s.reason, bases) for s in report.skipped],
                }
            )
            if count <= SKIPPED_IN_FULL:
                st.table(table.map(md_text).set_index("file"))  # wraps long reasons instead of cutting them off
            else:
                st.dataframe(
                    table,
                    hide_index=True,
                    width="stretch",
                    column_config={"reason": st.column_config.TextColumn(width="large")},
                )


st.title("Data")
imports, taxonomy_tab, counts_tab, export_tab = st.tabs(["Import", "Taxonomy", "Counts", "Export"])

with imports:
    total_box = st.empty()  # filled after the forms, so that it counts what they just imported
    if state.admin_only(project, "Importing images"):
        roots = project.settings.access.import_roots
        left, right = st.columns(2, gap="large")
        with left, st.form("import_folder"):
            st.markdown("**A folder on the server**")
            if roots:
                st.caption("Folders under " + ", ".join(f"`{root}`" for root in roots) + " (import_roots).")
            else:
                st.caption(data.NO_IMPORT_ROOTS)
            folder = st.text_input("Folder path", placeholder=roots[0] if roots else "", disabled=not roots)
            from_folders = st.checkbox(
                "Sub-folder names are labels",
                help="main/ or main/sub/ folders pre-label their images (ImageFolder layout)",
                disabled=not roots,
            )
            if st.form_submit_button("Import folder", type="primary", disabled=not roots):
                try:
                    with st.spinner("Importing..."):
                        report = data.import_folder(project, folder, labels_from_folders=from_folders, role=role)
                    show_report(report, shown_under)
                except (OSError, ValueError) as error:
                    st.error(md_text(common.public_message(str(error), shown_under)))
        with right, st.form("upload", clear_on_submit=True):
            st.markdown("**Upload from this computer**")
            uploads = st.file_uploader(
                "Images", type=["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"], accept_multiple_files=True
            )
            if st.form_submit_button("Import uploads", type="primary") and uploads:
                try:
                    with st.spinner("Importing..."):
                        report = data.import_uploads(project, [(f.name, f.getvalue()) for f in uploads], role=role)
                    show_report(report, shown_under)
                except OSError as error:  # a full disk (ImportDiskFull, or saving the uploads)
                    message = str(error) if isinstance(error, ImportDiskFull) else f"Not imported: {error}"
                    st.error(md_text(common.public_message(message, shown_under)))
        marked = data.unreadable_count(engine)
        st.caption(
            f"{marked} image{'' if marked == 1 else 's'} marked unreadable (file missing or no image when the Label "
            "page showed it). Once the files are back, a re-check serves them again."
        )
        if st.button("Re-check unreadable images", key="recheck_unreadable", disabled=not marked):
            recheck = data.recheck_unreadable(project, role=role)
            st.success(
                f"Re-checked {recheck.checked}: {recheck.cleared} readable again (mark cleared), "
                f"{len(recheck.still)} still unreadable."
            )
            for still in recheck.still[:SKIPPED_IN_FULL]:
                where = common.public_path(still.path, shown_under)
                st.caption(md_text(f"{where}: {common.public_message(still.reason, shown_under)}"))
    total_box.metric("Images in the project", common.image_total(engine))

with taxonomy_tab:
    st.caption(
        'Edit the taxonomy as TOML. Rename with `renamed_from = "old"`, merge with `merge_into = "other"`: '
        "labels follow. A class that has labels cannot simply disappear."
    )
    may_edit = state.admin_only(project, "Changing the taxonomy")
    revision = st.session_state.setdefault("taxonomy_revision", 0)
    text = st.text_area(
        "Taxonomy", data.taxonomy_toml(engine), height=320, key=f"taxonomy-{revision}", disabled=not may_edit
    )
    if may_edit and st.button("Apply taxonomy", type="primary"):
        try:
            changes = data.apply_taxonomy_toml(engine, text, role=role)
        except TaxonomyError as error:
            st.error(md_text(error))
        else:
            st.session_state["taxonomy_revision"] = revision + 1
            st.session_state["taxonomy_flash"] = "; ".join(changes) or "No change."
            st.rerun()
    if flash := st.session_state.pop("taxonomy_flash", None):
        st.success(md_text(flash))
    st.markdown("**Keys on the Label page** (the same on its `?` list)")
    key_table(state.taxonomy())

with counts_tab:
    counts = common.counts(engine)
    st.metric("Labelled images", counts.labelled_images)
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "main class": main,
                    "labelled": counts.by_main_class.get(main, 0),
                    "main class only": counts.main_class_only.get(main, 0),
                    **{f"tag: {sub}": n for sub, n in subs.items()},
                }
                for main, subs in counts.by_sub_class.items()
            ]
        ).fillna(0),
        hide_index=True,
        width="stretch",
    )

with export_tab:
    st.caption(
        "Every labelled image with its current label, who made it, when, and which model version queued it. "
        "`labeller export` also writes an ImageFolder tree."
    )
    if state.admin_only(project, "Exporting the labels"):
        downloads = st.container(horizontal=True)
        downloads.download_button(
            "Labels (CSV)",
            # A callable: the export is built when the button is clicked, not on every rerun of the page.
            functools.partial(data.labels_csv, project, role=role),
            file_name=f"{project.settings.name}-labels.csv",
            mime="text/csv",
            icon=":material/download:",
        )
        downloads.download_button(
            "Labels (JSON lines)",
            functools.partial(data.labels_jsonl, project, role=role),
            file_name=f"{project.settings.name}-labels.jsonl",
            mime="application/jsonl",
            icon=":material/download:",
        )
