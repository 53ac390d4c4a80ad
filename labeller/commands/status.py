"""``labeller status``: what is in a project, at a glance or as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from db.engine import reading
from db.queries.status import project_status
from labeller.commands.project import load_project
from labeller.promotion import audit_summary, interval_text


@click.command("status")
@click.argument("project", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def status_command(project: Path, as_json: bool) -> None:
    """Images, labels per class and sub-class, annotators, model versions and jobs of PROJECT."""
    from labeller.inputs import choose_input

    opened = load_project(project)
    with reading(opened.engine) as session:
        status = project_status(session)
    for version in status["model_versions"]:
        # n and the 95% interval beside the audit accuracy: on a handful of labels it is no measurement.
        version["audit"] = audit_summary(version["metrics"])
    status["input"] = choose_input(opened).as_dict() if status["images"] else None
    if as_json:
        click.echo(json.dumps({"project": opened.settings.name, **status}, indent=2))
    else:
        click.echo(format_status(opened.settings.name, status))


def format_status(name: str, status: dict[str, Any]) -> str:
    lines = [
        f"project {name}",
        f"images: {status['images']} ({status['labelled']} labelled, {status['unlabelled']} unlabelled, "
        f"{status['audit_images']} in the audit slice)",
        _audit_slice_line(status),
        "current decisions: "
        + ", ".join(f"{kind} {count}" for kind, count in status["images_by_current_decision"].items()),
    ]
    if status["classes"]:
        lines.append("labels per class:")
        for entry in status["classes"]:
            lines.append(f"  {entry['main_class']}: {entry['labelled']} (main class only: {entry['main_class_only']})")
            lines += [f"    {sub}: {count}" for sub, count in entry["sub_classes"].items()]
    else:
        lines.append("no taxonomy yet: labeller taxonomy PROJECT --file taxonomy.toml")
    if status.get("input"):
        chosen = status["input"]
        what = (
            f"pixels at {chosen['image_size']}x{chosen['image_size']}, {chosen['channels']} channel(s)"
            if chosen["backbone"] == "pixels"
            else f"{chosen['backbone']} features"
        )
        lines.append(f"model input: {what} ({chosen['reason']})")
    lines.append(f"annotators: {len(status['annotators'])}")
    lines += [
        f"  {a['name']}: {a['current_labels']} current labels, {a['history_rows']} history rows, "
        f"last {a['last_activity'] or 'never'}"
        for a in status["annotators"]
    ]
    lines.append(f"model versions: {len(status['model_versions'])}")
    for v in status["model_versions"]:
        lines.append(
            f"  #{v['id']} {v['name']} ({v['model_kind']}, {v['label_count']} labels){' ACTIVE' if v['active'] else ''}"
        )
        if (audit := audit_summary(v.get("metrics") or {})) is not None:
            lines.append(f"    audit main-class accuracy {interval_text(audit['main_accuracy'], audit['n'])}")
        if v.get("chosen_by_auto"):
            lines.append(f"    model auto: {v['chosen_by_auto']}")
    jobs = ", ".join(f"{status_name} {count}" for status_name, count in sorted(status["jobs"].items()))
    lines.append(f"jobs: {jobs or 'none'}")
    return "\n".join(lines)


def _audit_slice_line(status: dict[str, Any]) -> str:
    audit = status["audit"]
    line = f"audit slice: {audit['images']} images, {audit['labelled']} of them labelled"
    if audit["images"] and audit["labelled"] < audit["minimum_labels"]:
        line += (
            f" (fewer than {audit['minimum_labels']}: too few to compare model versions by; the queue serves "
            "audit images more often until then)"
        )
    return line
