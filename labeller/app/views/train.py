"""Train: queue a retrain for a worker, watch it live, compare model versions, promote or roll back."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from db.queries.jobs import JobError
from db.queries.models import ModelVersionError
from labeller.app import services, state

POLL_SECONDS = 2.0
DEVICES = ("auto", "cpu", "cuda")

project = state.current_project()
engine = project.engine
state.require_identity()
defaults = project.settings.training


def start(model: str, epochs: int, device: str) -> None:
    st.session_state["watched_job"] = services.start_training(engine, model=model, epochs=epochs, device=device)


def cancel(job_id: int) -> None:
    try:
        services.cancel(engine, job_id)
    except JobError as error:
        st.session_state["train_flash"] = str(error)


def promote(version_id: int) -> None:
    try:
        st.session_state["train_flash"] = services.promote(engine, version_id)
    except ModelVersionError as error:
        st.session_state["train_flash"] = str(error)


def roll_back() -> None:
    try:
        version_id = services.roll_back(engine)
        st.session_state["train_flash"] = f"Rolled back: model version {version_id} is active again."
    except ModelVersionError as error:
        st.session_state["train_flash"] = str(error)


def _curve(frame: pd.DataFrame, columns: list[str], x: str, title: str) -> go.Figure:
    figure = go.Figure()
    for column in columns:
        points = frame[[x, column]].dropna()
        figure.add_trace(go.Scatter(x=points[x], y=points[column], mode="lines+markers", name=column.split(".")[-1]))
    figure.update_layout(title=title, height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend_title=None)
    return figure


@st.fragment(run_every=POLL_SECONDS)
def live_progress() -> None:
    """Polls the job's events; the rest of the page does not rerun."""
    job_id = st.session_state.get("watched_job")
    if job_id is None:
        st.caption("No training job yet in this session.")
        return
    job, payloads, logs = services.job_progress(engine, job_id)
    status = {"queued": "waiting for a worker", "running": "running"}.get(job.status, job.status)
    if job.status == "running" and payloads and payloads[-1].get("stage"):
        status += f" · {payloads[-1]['stage']}"
    st.markdown(
        f"**Job {job.id}** ({job.params.get('model', job.kind)}, {job.params.get('epochs', '?')} epochs): {status}"
    )
    if job.status in ("queued", "running") and not job.cancel_requested:
        st.button("Cancel", key=f"cancel-{job.id}", on_click=cancel, args=(job.id,), icon=":material/stop_circle:")
    elif job.cancel_requested and not job.finished:
        st.caption("Cancelling...")
    if job.error and job.status != "succeeded":
        st.error(job.error)
    if job.status == "succeeded":
        st.success(
            f"Finished: model version {job.model_version_id} registered." if job.model_version_id else "Finished."
        )
    rows = services.flatten_progress(payloads)
    if rows:
        frame = pd.DataFrame(rows)
        # The newest training step (stage events such as "evaluating" carry no epoch).
        latest = next((row for row in reversed(rows) if "epoch" in row), rows[-1])
        metrics = st.columns(4)
        metrics[0].metric("Epoch", f"{latest.get('epoch', '-')}/{latest.get('epochs', job.params.get('epochs', '?'))}")
        speed = latest.get("images_per_second")
        metrics[1].metric("Images/s", f"{speed:.0f}" if isinstance(speed, int | float) else "-")
        eta = latest.get("eta_seconds") if not job.finished else 0.0
        metrics[2].metric("ETA", f"{eta / 60:.1f} min" if isinstance(eta, int | float) else "-")
        accuracy_keys = sorted(
            (k for k in latest if k.startswith("validation.") and "acc" in k), key=lambda k: "main" not in k
        )
        accuracy = latest.get(accuracy_keys[0]) if accuracy_keys else None
        metrics[3].metric("Validation accuracy", f"{accuracy:.1%}" if isinstance(accuracy, int | float) else "-")
        loss_columns = [c for c in frame.columns if c.startswith(("loss_terms.", "losses.", "loss."))]
        # Accuracies and calibration error share a 0-1 axis; the NLL would flatten them.
        validation_columns = [c for c in frame.columns if c.startswith("validation.") and "nll" not in c]
        charts = st.columns(2)
        if loss_columns:
            charts[0].plotly_chart(_curve(frame, loss_columns, "global_step", "Loss terms"), key="loss-curve")
        if validation_columns:
            by_epoch = frame.dropna(subset=validation_columns, how="all").drop_duplicates("epoch", keep="last")
            charts[1].plotly_chart(_curve(by_epoch, validation_columns, "epoch", "Validation"), key="val-curve")
    if logs:
        with st.expander("Log"):
            st.code("\n".join(logs[-30:]), language=None)
    if job.finished and st.session_state.get("finished_seen") != job.id:
        st.session_state["finished_seen"] = job.id
        st.rerun()  # the versions table below was drawn before the job finished


st.title("Train")
if flash := st.session_state.pop("train_flash", None):
    st.toast(flash)

with st.form("retrain"):
    cols = st.columns([2, 1, 1, 1], vertical_alignment="bottom")
    model = cols[0].selectbox(
        "Model",
        services.TRAIN_MODELS,
        index=services.TRAIN_MODELS.index(defaults.model) if defaults.model in services.TRAIN_MODELS else 0,
        format_func={"m1m2": "M1+M2", "m2": "M2", "m1": "M1 + classifier", "supervised": "Supervised only"}.get,
    )
    epochs = cols[1].number_input("Epochs", min_value=1, max_value=1000, value=defaults.epochs)
    device = cols[2].selectbox(
        "Device", DEVICES, index=DEVICES.index(defaults.device) if defaults.device in DEVICES else 0
    )
    if cols[3].form_submit_button("Start retrain", type="primary", icon=":material/play_arrow:"):
        start(model, int(epochs), device)
        st.rerun()

if "watched_job" not in st.session_state:
    running = [job for job in services.recent_jobs(engine, limit=5) if job.kind == "train" and not job.finished]
    if running:
        st.session_state["watched_job"] = running[0].id

with st.container(border=True):
    live_progress()

st.subheader("Model versions")
versions = services.model_versions(engine)
if not versions:
    st.info("No model yet: label a few images, then start a retrain. The queue uses cold-start order until then.")
else:
    table = pd.DataFrame(
        {
            "version": [v.id for v in versions],
            "active": [v.active for v in versions],
            "model": [v.model_kind for v in versions],
            "labels": [v.label_count for v in versions],
            "created": [v.created_at for v in versions],
            **{
                key: [v.metrics.get(key) for v in versions]
                for key in sorted({k for v in versions for k, val in v.metrics.items() if isinstance(val, int | float)})
            },
        }
    )
    st.dataframe(table, hide_index=True, width="stretch")
    actions = st.columns([2, 1, 1], vertical_alignment="bottom")
    chosen = actions[0].selectbox("Version", [v.id for v in versions], format_func=lambda i: f"version {i}")
    actions[1].button("Promote", on_click=promote, args=(chosen,), type="primary", width="stretch")
    actions[2].button("Roll back", on_click=roll_back, width="stretch")

    numeric = {k for v in versions for k, value in v.metrics.items() if isinstance(value, int | float)}
    # The audit slice is the unbiased sample: prefer it to validation on actively chosen labels.
    preferred = ("audit_main_accuracy", "audit_accuracy", "val_main_accuracy")
    accuracy_key = next((k for k in preferred if k in numeric), next((k for k in sorted(numeric) if "acc" in k), None))
    if accuracy_key:
        curve = sorted((v.label_count, v.metrics[accuracy_key]) for v in versions if accuracy_key in v.metrics)
        figure = go.Figure(go.Scatter(x=[c[0] for c in curve], y=[c[1] for c in curve], mode="lines+markers"))
        figure.update_layout(
            title=f"Learning curve ({accuracy_key} vs labels)",
            xaxis_title="labels",
            height=300,
            margin={"l": 10, "r": 10, "t": 40, "b": 10},
        )
        st.plotly_chart(figure, key="learning-curve")

st.subheader("Labels")
label_counts = services.counts(engine)
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
