"""Train: queue a retrain for a worker, watch it live, compare model versions, promote or roll back."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.registry import MAX_EPOCHS
from db.queries.audit import MIN_AUDIT_LABELS
from db.queries.jobs import JobError
from db.queries.models import ModelVersionError
from labeller.app import state
from labeller.app.services import common, train, train_report

POLL_SECONDS = 2.0
DEVICES = ("auto", "cpu", "cuda")
FOLLOW_UP_NAMES = {"score": "Scoring the pool", "embed": "Latent map for Explore"}

project = state.current_project()
engine = project.engine
state.require_identity()
role = state.role(project)  # starting, cancelling, promoting and rolling back are the admins' (services check it)
defaults = project.settings.training


@st.cache_data(show_spinner=False, max_entries=8)
def input_decision(root: str, images: int, setting: str) -> train_report.InputDecision:
    """Cached by image count (and setting): deciding "auto" opens a few dozen images."""
    return train_report.input_decision(project)


def start(model: str, epochs: int, device: str, backbone: str) -> None:
    try:
        st.session_state["watched_job"] = train.start_training(
            engine,
            model=model,
            epochs=epochs,
            device=device,
            role=role,
            backbone=train_report.backbone_param(project, backbone),
        )
    except train.TrainingInProgress as busy:
        st.session_state["watched_job"] = busy.job_id
        st.session_state["train_flash"] = str(busy)
    except (common.NotAllowed, ValueError) as error:
        st.session_state["train_flash"] = str(error)


def cancel(job_id: int) -> None:
    try:
        train.cancel(engine, job_id, role=role)
    except (JobError, common.NotAllowed) as error:
        st.session_state["train_flash"] = str(error)


def promote(version_id: int) -> None:
    try:
        st.session_state["train_flash"] = train.promote(engine, version_id, role=role)
    except (ModelVersionError, common.NotAllowed) as error:
        st.session_state["train_flash"] = str(error)


def roll_back() -> None:
    try:
        version_id = train.roll_back(engine, role=role)
        st.session_state["train_flash"] = f"Rolled back: model version {version_id} is active again."
    except (ModelVersionError, common.NotAllowed) as error:
        st.session_state["train_flash"] = str(error)


def _curve(frame: pd.DataFrame, columns: list[str], x: str, title: str) -> go.Figure:
    figure = go.Figure()
    for column in columns:
        points = frame[[x, column]].dropna()
        figure.add_trace(go.Scatter(x=points[x], y=points[column], mode="lines+markers", name=column.split(".")[-1]))
    figure.update_layout(title=title, height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend_title=None)
    return figure


def _follow_ups(model_version_id: int | None) -> None:
    for follow_up in train_report.follow_up_jobs(engine, model_version_id):
        name = FOLLOW_UP_NAMES.get(follow_up.kind, follow_up.kind)
        status = {"queued": "waiting for a worker"}.get(follow_up.status, follow_up.status)
        note = " (Explore shows the new map when this finishes)" if follow_up.kind == "embed" else ""
        st.caption(f"{name}: job {follow_up.id}, {status}{note if not follow_up.finished else ''}")


@st.fragment(run_every=POLL_SECONDS)
def live_progress() -> None:
    """Polls the job's events; the rest of the page does not rerun."""
    job_id = st.session_state.get("watched_job")
    if job_id is None:
        st.caption("No training job yet.")
        return
    job, payloads, logs = train.job_progress(engine, job_id)
    rows = train.flatten_progress(payloads)
    stages = train_report.stage_progress(rows)
    epochs = job.params.get("epochs", defaults.epochs)
    status = {"queued": "waiting for a worker", "running": "running"}.get(job.status, job.status)
    if job.status == "running" and stages.stage:
        status += f" · {stages.stage}"
    backbone = job.params.get("backbone")
    # A train job queued without a model trains the project's.
    model = job.params.get("model") or (defaults.model if job.kind == "train" else job.kind)
    st.markdown(f"**Job {job.id}** ({model}, {epochs} epochs{', ' + backbone if backbone else ''}): {status}")
    if job.status in ("queued", "running") and not job.cancel_requested and is_admin:
        st.button("Cancel", key=f"cancel-{job.id}", on_click=cancel, args=(job.id,), icon=":material/stop_circle:")
    elif job.cancel_requested and not job.finished:
        st.caption("Cancelling...")
    if job.status == "cancelled":
        st.info(f"Cancelled{': ' + job.error if job.error else ''}.", icon=":material/cancel:")
    elif job.error and job.status != "succeeded":
        st.error(common.public_message(job.error, [project.root]))  # the worker's message, without server paths
    if job.status == "succeeded":
        st.success(
            f"Finished: model version {job.model_version_id} registered." if job.model_version_id else "Finished."
        )
    if stages.features is not None:
        st.progress(train_report.features_fraction(stages.features), text=train_report.features_text(stages.features))
    if rows:
        frame = pd.DataFrame(rows)
        latest = stages.training or {}
        metrics = st.columns(4)
        metrics[0].metric("Epoch", stages.epoch_text(epochs))
        speed = latest.get("images_per_second")
        metrics[1].metric("Images/s", f"{speed:.0f}" if isinstance(speed, int | float) else "-")
        eta = latest.get("eta_seconds") if not job.finished else 0.0
        metrics[2].metric("ETA", f"{eta / 60:.1f} min" if isinstance(eta, int | float) else "-")
        accuracy_keys = sorted(
            (k for k in latest if k.startswith("validation.") and "acc" in k), key=lambda k: "main" not in k
        )
        accuracy = latest.get(accuracy_keys[0]) if accuracy_keys else None
        metrics[3].metric("Validation accuracy", f"{accuracy:.1%}" if isinstance(accuracy, int | float) else "-")
        if stages.scoring is not None:
            scored = "scored" if job.finished else "scoring"
            st.caption(f"Pool {scored}: {stages.scoring.get('images', '?')} images.")
        training = frame[frame["stage"] == "training"] if "stage" in frame.columns else frame.iloc[0:0]
        loss_columns = [c for c in training.columns if c.startswith(("loss_terms.", "losses.", "loss."))]
        # Accuracies and calibration error share a 0-1 axis; the NLL would flatten them.
        validation_columns = [c for c in training.columns if c.startswith("validation.") and "nll" not in c]
        charts = st.columns(2)
        if loss_columns and len(training):
            charts[0].plotly_chart(_curve(training, loss_columns, "global_step", "Loss terms"), key="loss-curve")
        if validation_columns and len(training):
            by_epoch = training.dropna(subset=validation_columns, how="all").drop_duplicates("epoch", keep="last")
            charts[1].plotly_chart(_curve(by_epoch, validation_columns, "epoch", "Validation"), key="val-curve")
    if job.status == "succeeded":
        _follow_ups(job.model_version_id)
    if logs:
        with st.expander("Log"):
            st.code("\n".join(logs[-30:]), language=None)
    if job.finished and st.session_state.get("finished_seen") != job.id:
        st.session_state["finished_seen"] = job.id
        st.rerun()  # the versions table below was drawn before the job finished


st.title("Train")
is_admin = state.admin_only(project, "Starting, cancelling, promoting and rolling back training")
if flash := st.session_state.pop("train_flash", None):
    st.toast(common.public_message(flash, [project.root]))

decision = input_decision(str(project.root), common.image_total(engine), defaults.backbone)
st.caption(f"Input: **{decision.backbone}** ({decision.reason}).")
pending = train.pending_training(engine)
with st.form("retrain"):
    cols = st.columns([2, 2, 1, 1, 1], vertical_alignment="bottom")
    model = cols[0].selectbox(
        "Model",
        train.TRAIN_MODELS,
        index=train.TRAIN_MODELS.index(defaults.model) if defaults.model in train.TRAIN_MODELS else 0,
        format_func=lambda kind: train.MODEL_LABELS.get(kind, kind),
    )
    choices = train_report.BACKBONE_CHOICES
    backbone = cols[1].selectbox(
        "Input (backbone)",
        choices,
        index=choices.index(defaults.backbone) if defaults.backbone in choices else 0,
        help="auto decides from the images: pixels for greyscale or tiny images, a pretrained backbone for photos.",
    )
    # The settings' bound: a project set above the box's old 1,000 made the page fail to open.
    epochs = cols[2].number_input("Epochs", min_value=1, max_value=MAX_EPOCHS, value=defaults.epochs)
    device = cols[3].selectbox(
        "Device", DEVICES, index=DEVICES.index(defaults.device) if defaults.device in DEVICES else 0
    )
    if cols[4].form_submit_button(
        "Start retrain",
        type="primary",
        icon=":material/play_arrow:",
        disabled=pending is not None or not is_admin,
        help=f"Train job {pending.id} is {pending.status}." if pending else None,
    ):
        start(model, int(epochs), device, backbone)
        st.rerun()

if "watched_job" not in st.session_state:
    # A fresh session follows the running job, else shows the newest one (never "no job" after jobs ran).
    latest = pending or train_report.latest_train_job(engine)
    if latest is not None:
        st.session_state["watched_job"] = latest.id

with st.container(border=True):
    live_progress()

st.subheader("Model versions")
versions = train.model_versions(engine)
if not versions:
    st.info("No model yet: label a few images, then start a retrain. The queue uses cold-start order until then.")
else:
    active = next((v for v in versions if v.active), None)
    if active is not None and (warning := train_report.calibration_warning(engine, active)):
        st.warning(f"Model version {active.id}: {warning}", icon=":material/warning:")
    metric_rows, setting_rows = train_report.version_tables(versions)
    st.markdown("**Metrics**")
    st.dataframe(pd.DataFrame(metric_rows), hide_index=True, width="stretch", key="version-metrics")
    with st.expander("Settings of each version"):
        st.dataframe(pd.DataFrame(setting_rows), hide_index=True, width="stretch", key="version-settings")
    actions = st.columns([2, 1, 1], vertical_alignment="bottom")
    chosen = actions[0].selectbox("Version", [v.id for v in versions], format_func=lambda i: f"version {i}")
    actions[1].button(
        "Promote", on_click=promote, args=(chosen,), type="primary", width="stretch", disabled=not is_admin
    )
    actions[2].button("Roll back", on_click=roll_back, width="stretch", disabled=not is_admin)

    promotions = train_report.promotion_rows(versions)
    if promotions:
        st.markdown("**Promotion decisions**")
        st.caption(
            "Each new version is measured beside the active one on the same held-out audit labels; it is "
            "promoted when better, or not worse within the noise (95% interval of the difference). The test "
            "is paired (McNemar on the images where they disagree, Newcombe's paired interval) where both "
            "versions' right and wrong images are known, unpaired otherwise; the reason says which. On fewer "
            f"than {MIN_AUDIT_LABELS} audit labels that says little: the newer version is promoted as the "
            "newest, and the reason says so with n and the 95% intervals."
        )
        newest = promotions[0]
        verdict = "promoted" if newest["promoted"] else "not promoted"
        st.markdown(f"Version {newest['version']} {verdict}: {newest['reason']}")
        st.dataframe(
            pd.DataFrame(promotions),
            hide_index=True,
            width="stretch",
            key="promotions",
            column_config={"reason": st.column_config.TextColumn(width="large")},
        )

    curve = train_report.learning_curve(versions)
    if curve:
        figure = go.Figure(
            go.Scatter(
                x=[p.labels for p in curve],
                y=[p.accuracy for p in curve],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [p.high - p.accuracy for p in curve],
                    "arrayminus": [p.accuracy - p.low for p in curve],
                },
                text=[
                    f"version {p.version}: n = {p.n} {p.source} labels, 95% interval {p.low:.3f} to {p.high:.3f}"
                    + (" (too few)" if p.few else "")
                    for p in curve
                ],
                # Hollow markers: measured on too few labels to read as a value.
                marker={"symbol": ["circle-open" if p.few else "circle" for p in curve], "size": 9},
                mode="lines+markers",
            )
        )
        figure.update_layout(
            title="Learning curve: main-class accuracy vs labels (95% Wilson interval; hover for n)",
            xaxis_title="labels",
            height=300,
            margin={"l": 10, "r": 10, "t": 40, "b": 10},
        )
        st.plotly_chart(figure, key="learning-curve")
        few = [p for p in curve if p.few]
        if few:
            st.caption(
                f"Hollow points: measured on fewer than {MIN_AUDIT_LABELS} labels "
                f"({', '.join(f'version {p.version}: n = {p.n}' for p in few)}), too few to read as a value; "
                "their 95% intervals show how little they say. The Label page serves audit images more often "
                f"until {MIN_AUDIT_LABELS} carry a label."
            )

    st.markdown("**Per class**")
    report_version = st.selectbox(
        "Per-class results of", [v.id for v in versions], format_func=lambda i: f"version {i}", key="report-version"
    )
    report = train_report.class_report(engine, report_version)
    for title, held_out, note in (
        ("Held out", True, "audit-slice labels and labels given after this version was trained"),
        ("In-sample", False, "labels this version trained on: optimistic, not a measure of accuracy"),
    ):
        matrix = report.held_out if held_out else report.in_sample
        if not matrix.sum():
            continue
        st.caption(f"{title}: {note} ({int(matrix.sum())} images; rows: label, columns: prediction).")
        cells = st.columns([1, 2])
        cells[0].dataframe(
            pd.DataFrame(report.accuracy_rows(report.classes, matrix)),
            hide_index=True,
            key=f"accuracy-{title}",
            column_config={"accuracy": st.column_config.NumberColumn(format="percent")},
        )
        cells[1].dataframe(pd.DataFrame(matrix, index=report.classes, columns=report.classes), key=f"confusion-{title}")
        leaf_matrix = report.leaf_held_out if held_out else report.leaf_in_sample
        if leaf_note := report.leaf_note(title, held_out):
            st.caption(leaf_note)
        if report.has_sub_classes and leaf_matrix.sum():
            cells = st.columns([1, 2])
            cells[0].dataframe(
                pd.DataFrame(report.accuracy_rows(report.leaves, leaf_matrix, what="sub-class")),
                hide_index=True,
                key=f"leaf-accuracy-{title}",
                column_config={"accuracy": st.column_config.NumberColumn(format="percent")},
            )
            cells[1].dataframe(
                pd.DataFrame(leaf_matrix, index=report.leaves, columns=report.leaves), key=f"leaf-confusion-{title}"
            )

    if len(versions) >= 2:
        st.markdown("**Compare versions** (as `labeller models compare A B`)")
        ids = [v.id for v in versions]
        pair = st.columns(2)
        first = pair[0].selectbox("A", ids, index=1, format_func=lambda i: f"version {i}", key="compare-a")
        second = pair[1].selectbox("B", ids, index=0, format_func=lambda i: f"version {i}", key="compare-b")
        comparison = train_report.compare_versions(engine, first, second)
        st.caption(f"Same held-out labels: {train_report.held_out_comparison(comparison)}.")
        metric_rows, difference_rows = train_report.comparison_rows(comparison)
        st.dataframe(pd.DataFrame(metric_rows), hide_index=True, width="stretch", key="compare-metrics")
        if difference_rows:
            st.dataframe(pd.DataFrame(difference_rows), hide_index=True, width="stretch", key="compare-settings")

st.subheader("Labels")
label_counts = common.counts(engine)
count_cols = st.columns([1, 2])
count_cols[0].metric("Labelled images", label_counts.labelled_images)
count_cols[1].dataframe(
    pd.DataFrame(
        [
            {"main class": main, "sub-class": sub, "images": n}
            for main, subs in label_counts.by_sub_class.items()
            for sub, n in subs.items()
        ]
        + [
            {"main class": main, "sub-class": "(main only)", "images": n}
            for main, n in label_counts.main_class_only.items()
        ]
    ),
    hide_index=True,
    width="stretch",
)
