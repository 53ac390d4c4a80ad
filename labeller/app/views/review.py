"""Review: my recent labels, likely mistakes (the model confidently disagrees), annotator disagreements,
and per-annotator counts with Cohen's kappa on doubly labelled images."""

from __future__ import annotations

from urllib.parse import quote

import pandas as pd
import streamlit as st

from labeller.app import state
from labeller.app.components import image_tile
from labeller.app.reveal import held_reveals, hold_reveal, page_veil, tile_class
from labeller.app.services import common, label, renditions, review
from labeller.app.services.label_session import image_data_url
from labeller.app.services.review import kappa_text
from labeller.app.text import md_text

project = state.current_project()
engine = project.engine
who = state.require_identity()
taxonomy = state.taxonomy()

# Annotators review their own work; other people's labels and the team's agreement are for admins.
admin = state.role(project) is common.Role.ADMIN

st.title("Review")
mine, mistakes, between, team = st.tabs(["My labels", "Likely mistakes", "Disagreements", "Annotators"])

THUMBNAIL = st.column_config.ImageColumn("image", width="small")
# Hidden images stay hidden in the tables: no thumbnail unless the annotator shows images plainly.
plain = state.image_filter_class(project) == "plain"


def thumbnails(image_ids: list[int]) -> list[str | None]:
    if not plain:
        return [None] * len(image_ids)
    files = common.display_files(engine, project, image_ids)
    return [image_data_url(files[i]) if i in files else None for i in image_ids]


with mine:
    history = label.my_history(engine, who.annotator_id, limit=50)
    if not history:
        st.info("You have not labelled anything yet.")
    else:
        st.dataframe(
            pd.DataFrame(
                {
                    "thumbnail": thumbnails([h.image_id for h in history]),
                    "time": [h.created_at for h in history],
                    "image": [h.image_id for h in history],
                    "decision": [str(h.kind) for h in history],
                    "main class": [h.main_class or "" for h in history],
                    "tags": [", ".join(h.tags) for h in history],
                    "queued by": [h.served_by for h in history],
                }
            ),
            hide_index=True,
            width="stretch",
            column_config={"thumbnail": THUMBNAIL},
            row_height=48,
        )
        st.caption("Change or undo a label from the Label page's Recent list, or relabel it on the Grid page.")

with mistakes:
    threshold = st.slider("Model confidence at least", 0.5, 0.99, 0.9, 0.01)
    found = review.likely_mistakes(engine, min_confidence=threshold, annotator_id=None if admin else who.annotator_id)
    if not found:
        st.info("No human label is contradicted by the active model at this confidence (or no model is active).")
    else:
        found_ids = [m.image_id for m in found]
        files = renditions.served_thumbnails(engine, project, found_ids, page_veil(project), held_reveals())
        columns = st.columns(6)
        for index, item in enumerate(found):
            with columns[index % 6]:
                shown_as = tile_class(project, item.image_id)
                image_tile(files[item.image_id], key=f"mistake-{index}-{item.image_id}", hidden_class=shown_as)
                link = f"./?image={item.image_id}&annotator={quote(who.name)}"
                st.caption(
                    f"{item.image_id}: **{md_text(taxonomy.main_name(item.human_main_id))}** by "
                    f"{md_text(item.annotator)}; model says {md_text(taxonomy.main_name(item.predicted_main_id))} "
                    f"({item.confidence:.0%}) · "
                    f"[relabel]({link})"
                )
        hold_reveal(project, found_ids, key="review-hold")
        if st.button("Open these in the Grid", icon=":material/grid_view:"):
            st.session_state["explore_selection"] = list(dict.fromkeys(m.image_id for m in found))
            st.session_state["grid_from_explore"] = True
            st.switch_page("views/grid.py")

summary = review.review_summary(engine) if admin else None

with between:
    if summary is None:
        st.info("Disagreements between annotators are for the project's admins.", icon=":material/lock:")
    elif not summary.disagreements:
        st.info("No image has conflicting labels from different annotators.")
    else:
        st.caption("Labels conflict when no sub-class fits them all: a main class alone agrees with any of its tags.")
        st.dataframe(
            pd.DataFrame(
                {
                    "thumbnail": thumbnails([d.image_id for d in summary.disagreements]),
                    "image": [d.image_id for d in summary.disagreements],
                    "labels": [
                        "; ".join(f"{a}: {m}" + (f" ({', '.join(t)})" if t else "") for a, m, t in d.labels)
                        for d in summary.disagreements
                    ],
                    "main classes differ": [d.main_classes_differ for d in summary.disagreements],
                }
            ),
            hide_index=True,
            width="stretch",
            column_config={"thumbnail": THUMBNAIL},
            row_height=48,
        )

with team:
    if summary is None:
        st.info("The team's counts and agreement are for the project's admins.", icon=":material/lock:")
    elif summary.counts:
        counts = pd.DataFrame(summary.counts, columns=["annotator", "decision", "count"])
        st.dataframe(
            counts.pivot_table(index="annotator", columns="decision", values="count", fill_value=0),
            width="stretch",
        )
    if summary is not None and summary.agreements:
        st.markdown("**Agreement on doubly labelled images** (main classes)")
        st.dataframe(
            pd.DataFrame(
                {
                    "annotators": [f"{r.annotator_a} / {r.annotator_b}" for r in summary.agreements],
                    "shared images": [r.images for r in summary.agreements],
                    "agreement": [r.observed_agreement for r in summary.agreements],
                    "Cohen's kappa": [kappa_text(r.cohen_kappa, r.images) for r in summary.agreements],
                }
            ),
            hide_index=True,
            width="stretch",
            column_config={"agreement": st.column_config.NumberColumn(format="percent")},
        )
    elif summary is not None:
        st.caption("Cohen's kappa appears once two annotators have labelled the same images.")
