"""Exports loaded by the tools people use (torchvision, Hugging Face datasets, cleanlab; FiftyOne, Label
Studio and COCO by their documented formats), and every format read back by ``labeller import``:
export -> fresh project -> export keeps labels, tags, annotators and times."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest

from labeller.cli import cli
from labeller.export import EXPORT_FORMATS, ExportOptions, export_labels
from labeller.ingest import IngestError, import_images
from labeller.manifest import ManifestOptions, read_manifest
from labeller.project import Project
from tests.export_factory import LABELS, LEAF_PROBABILITIES, QUIET, interchange_project, new_project

FILE_FORMATS = {"csv": "labels.csv", "jsonl": "labels.jsonl", "coco": "coco.json"}
LABEL_FIELDS = ("main_class", "leaf", "sub_classes", "annotator", "labelled_at", "source", "strategy")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return interchange_project(tmp_path_factory.mktemp("interchange"))


def out_path(root: Path, format: str) -> Path:
    return root / FILE_FORMATS.get(format, format)


def labels_by_sha(project: Project, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The project's labels through its own JSON lines export, keyed by content hash."""
    out = tmp_path / "check.jsonl"
    export_labels(project, "jsonl", out, ExportOptions())
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return {r["sha256"]: {name: r[name] for name in LABEL_FIELDS} for r in records}


def by_name(project: Project, tmp_path: Path) -> dict[str, dict[str, Any]]:
    out = tmp_path / "names.jsonl"
    export_labels(project, "jsonl", out, ExportOptions(include_unlabelled=True, predictions=True))
    return {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}


def test_rows_carry_leaf_predictions_and_the_in_sample_flag(project: Project, tmp_path: Path) -> None:
    rows = by_name(project, tmp_path)
    assert {name: (r["main_class"], tuple(r["sub_classes"])) for name, r in rows.items() if r["main_class"]} == {
        name: label[:2] for name, label in LABELS.items() if label
    }
    assert [rows[n]["leaf"] for n in ("a1.png", "a2.jpg", "b1.png", "h1.png", "u1.png")] == [
        "ants/red",
        "",  # main class only, on a class with sub-classes: partial
        "bees",  # a main class without sub-classes is its own leaf
        "",  # two tags: partial
        "",
    ]
    assert rows["h1.png"]["annotator"] == "alice" and rows["h1.png"]["labelled_at"] == "2026-03-01T10:30:15Z"
    prediction = rows["h2.png"]["prediction"]
    assert (prediction["main_class"], prediction["leaf"], prediction["model_version"]) == ("ants", "ants/red", "m2-v1")
    assert prediction["leaf_probabilities"] == dict(
        zip(["ants/red", "ants/black", "bees"], LEAF_PROBABILITIES["h2.png"], strict=True)
    )
    assert prediction["main"]["ants"] == pytest.approx(0.95)
    assert prediction["scores"]["entropy"] > 0 and prediction["scores"]["bald"] is None
    # Labelled up to the version's snapshot: in sample. h2 was labelled after training; u1 has no label.
    assert {name: r["prediction"]["in_sample"] for name, r in rows.items()} == {
        "a1.png": True,
        "a2.jpg": True,
        "b1.png": True,
        "h1.png": True,
        "h2.png": False,
        "u1.png": False,
    }


def test_paths_are_relative_to_the_export_unless_asked(project: Project, tmp_path: Path) -> None:
    export_labels(project, "csv", tmp_path / "out" / "labels.csv", ExportOptions())
    export_labels(project, "csv", tmp_path / "rooted.csv", ExportOptions(relative_to=tmp_path.parent))
    export_labels(project, "csv", tmp_path / "absolute.csv", ExportOptions(absolute_paths=True))
    for name, base in (("out/labels.csv", tmp_path / "out"), ("rooted.csv", tmp_path.parent), ("absolute.csv", None)):
        with (tmp_path / name).open(newline="") as stream:
            paths = [row["path"] for row in csv.DictReader(stream)]
        assert all(Path(p).is_absolute() == (base is None) for p in paths), name
        assert all(((base / p) if base else Path(p)).is_file() for p in paths), name


@pytest.mark.parametrize("format", EXPORT_FORMATS)
def test_round_trip_keeps_labels_tags_annotators_and_times(project: Project, tmp_path: Path, format: str) -> None:
    """export -> fresh project -> export: the same labels, tags, annotators, times and provenance."""
    out = out_path(tmp_path / "export", format)
    export_labels(project, format, out, ExportOptions(include_unlabelled=True, predictions=True))  # type: ignore[arg-type]
    fresh = new_project(tmp_path / "fresh")
    report = import_images(fresh, manifest=out, options=QUIET)
    assert report.skipped == []
    assert (report.added, report.labelled) == (6, 5)  # the unlabelled image comes along, unlabelled
    original = labels_by_sha(project, tmp_path / "a")
    assert labels_by_sha(fresh, tmp_path / "b") == original
    # ...and once more, from the fresh project's own export in the same format.
    again = out_path(tmp_path / "again", format)
    export_labels(fresh, format, again, ExportOptions(include_unlabelled=True))  # type: ignore[arg-type]
    third = new_project(tmp_path / "third")
    import_images(third, manifest=again, options=QUIET)
    assert labels_by_sha(third, tmp_path / "c") == original


def test_a_plain_manifest_is_still_a_pre_label(tmp_path: Path) -> None:
    project = interchange_project(tmp_path / "source")
    images = tmp_path / "source" / "data" / "loose"
    manifest = tmp_path / "plain.csv"
    manifest.write_text(f"path,class,tags\n{images / 'u1.png'},ants,red\n")
    fresh = new_project(tmp_path / "fresh")
    assert import_images(fresh, manifest=manifest, options=QUIET).labelled == 1
    (label,) = labels_by_sha(fresh, tmp_path).values()
    assert (label["main_class"], label["sub_classes"], label["annotator"], label["source"]) == (
        "ants",
        ["red"],
        "import",
        "import",
    )
    project.engine.dispose()


def test_fiftyone_csv_with_comma_tags_and_quoted_fields(tmp_path: Path) -> None:
    """FiftyOne's CSV export joins tags with ','; a quoted field keeps its commas with --tag-separator ','."""
    interchange_project(tmp_path / "source")
    images = tmp_path / "source" / "data" / "loose"
    manifest = tmp_path / "fiftyone.csv"
    manifest.write_text(
        f'filepath,ground_truth,tags\n{images / "h1.png"},ants,"red,black"\n{images / "b1.png"},bees,\n'
    )
    fresh = new_project(tmp_path / "fresh")
    report = import_images(fresh, manifest=read_manifest(manifest, ManifestOptions(tag_separator=",")), options=QUIET)
    assert (report.added, report.labelled, report.skipped) == (2, 2, [])
    assert sorted((v["main_class"], tuple(v["sub_classes"])) for v in labels_by_sha(fresh, tmp_path).values()) == [
        ("ants", ("red", "black")),
        ("bees", ()),
    ]


def test_unrecognised_label_columns_are_an_error_not_an_unlabelled_import(tmp_path: Path) -> None:
    write = tmp_path / "odd.csv"
    write.write_text("path,category,subcategory\na.png,ants,red\n")
    fresh = new_project(tmp_path / "fresh")
    with pytest.raises(IngestError, match="no label column recognised among category, subcategory"):
        import_images(fresh, manifest=write, options=QUIET)
    # Paths alone are a plain list of files, which is fine.
    (tmp_path / "only.csv").write_text("path\n")
    assert read_manifest(tmp_path / "only.csv").entries == []


def test_foreign_coco_and_label_studio_choices(tmp_path: Path) -> None:
    """Files other tools wrote: COCO categories without our extras (supercategory = main class), and a
    Label Studio export whose config used Choices instead of a Taxonomy."""
    interchange_project(tmp_path / "source")
    images = tmp_path / "source" / "data" / "loose"
    coco = {
        "images": [{"id": 7, "file_name": str(images / "h1.png")}, {"id": 8, "file_name": str(images / "b1.png")}],
        "categories": [{"id": 1, "name": "red", "supercategory": "ants"}, {"id": 2, "name": "bees"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1}, {"id": 2, "image_id": 8, "category_id": 2}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    studio = [
        {
            "data": {"image": str(images / "u1.png")},
            "annotations": [{"result": [{"type": "choices", "value": {"choices": ["bees"]}}]}],
        }
    ]
    (tmp_path / "studio.json").write_text(json.dumps(studio))
    fresh = new_project(tmp_path / "fresh")
    assert import_images(fresh, manifest=tmp_path / "coco.json", options=QUIET).labelled == 2
    assert import_images(fresh, manifest=tmp_path / "studio.json", options=QUIET).labelled == 1
    assert sorted((v["main_class"], tuple(v["sub_classes"])) for v in labels_by_sha(fresh, tmp_path).values()) == [
        ("ants", ("red",)),
        ("bees", ()),
        ("bees", ()),
    ]


# --- the clients -------------------------------------------------------------------------------------


def test_torchvision_imagefolder_reads_main_classes(project: Project, tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    out = tmp_path / "folder"
    export_labels(project, "imagefolder", out, ExportOptions())
    dataset = ImageFolder(str(out))
    assert dataset.classes == ["ants", "bees"]
    with (out / "labels.csv").open(newline="") as stream:
        expected = {str(out / r["exported_file"]): r["main_class"] for r in csv.DictReader(stream)}
    assert {path: dataset.classes[target] for path, target in dataset.samples} == expected
    image, target = dataset[0]
    assert image.size[0] > 0 and dataset.classes[target] == "ants"


@pytest.mark.parametrize(("layout", "depth"), [("main/sub", 3), ("leaf", 2)])
def test_hugging_face_datasets_loads_labels_from_metadata(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, depth: int
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import datasets

    out = tmp_path / "hf"
    export_labels(project, "hf", out, ExportOptions(layout=layout, predictions=True))
    files = [path for path in out.rglob("*") if path.is_file() and path.name != "metadata.csv"]
    depths = {len(path.relative_to(out).parts) for path in files}
    assert depths == {depth}  # every file at one depth, so datasets accepts the tree
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "cache"))["train"]
    assert loaded.features["main_class"].dtype in ("string", "large_string")
    assert loaded.features["sub_classes"].dtype in ("string", "large_string")  # a JSON list, never float
    got = {
        row["sha256"]: (row["main_class"], row["leaf"] or "", tuple(json.loads(row["sub_classes"])), row["annotator"])
        for row in loaded
    }
    expected = {
        sha: (v["main_class"], v["leaf"], tuple(v["sub_classes"]), v["annotator"])
        for sha, v in labels_by_sha(project, tmp_path).items()
    }
    assert got == expected
    assert loaded[0]["image"].size[0] > 0
    assert all(0.0 <= p <= 1.0 for p in loaded["p_main:ants"])


def test_cleanlab_finds_the_label_the_model_contradicts(project: Project, tmp_path: Path) -> None:
    """Out-of-sample probabilities from the export go straight into find_label_issues."""
    import numpy as np
    import pandas as pd
    from cleanlab.filter import find_label_issues

    export_labels(project, "csv", tmp_path / "p.csv", ExportOptions(predictions=True))
    frame = pd.read_csv(tmp_path / "p.csv")
    classes = ["ants", "bees"]
    probabilities = frame[[f"p_main:{name}" for name in classes]].to_numpy()
    labels = frame["main_class"].map(classes.index).to_numpy()
    issues = find_label_issues(labels=labels, pred_probs=probabilities / probabilities.sum(axis=1, keepdims=True))
    flagged = {Path(p).name for p in frame.loc[issues, "path"]}
    assert flagged == {"h2.png"}
    # The flag that says which probabilities are honest: only h2's label came after training.
    assert frame.loc[~frame["prediction_in_sample"], "path"].map(lambda p: Path(p).name).tolist() == ["h2.png"]
    assert np.allclose(frame[[f"p_leaf:{n}" for n in ("ants/red", "ants/black", "bees")]].sum(axis=1), 1.0)


def test_fiftyone_classification_dataset_layout(project: Project, tmp_path: Path) -> None:
    """FiftyOneImageClassificationDataset, parsed as FiftyOne's importer does: data/<uuid>.<ext> and
    labels.json {"classes": [...], "labels": {uuid: null | {"label": ..., "confidence": ...}}}."""
    out = tmp_path / "fo"
    export_labels(project, "fiftyone", out, ExportOptions(predictions=True, include_unlabelled=True))
    files = {path.stem: path for path in (out / "data").iterdir()}
    expected = labels_by_sha(project, tmp_path)
    for name in ("labels.json", "leaf_labels.json", "predictions.json"):
        document = json.loads((out / name).read_text())
        assert set(document) == {"classes", "labels"}
        assert set(document["labels"]) <= set(files), name
    labels = json.loads((out / "labels.json").read_text())
    assert labels["classes"] == ["ants", "bees"] and set(labels["labels"]) == set(files)
    for target in labels["labels"].values():
        if target is None:
            continue
        assert target["label"] in labels["classes"]
        assert {k: target[k] for k in LABEL_FIELDS} == expected[target["sha256"]]
    assert sum(target is None for target in labels["labels"].values()) == 1
    predictions = json.loads((out / "predictions.json").read_text())["labels"]
    assert len(predictions) == 6
    assert all(p["label"] in ("ants", "bees") and 0.5 <= p["confidence"] <= 1 for p in predictions.values())
    leaves = json.loads((out / "leaf_labels.json").read_text())
    assert sorted(t["label"] for t in leaves["labels"].values() if t) == ["ants/red", "bees", "bees"]


def test_label_studio_config_tasks_and_pre_annotations(project: Project, tmp_path: Path) -> None:
    out = tmp_path / "ls"
    options = ExportOptions(predictions=True, include_unlabelled=True, url_prefix="http://files.example/x/")
    export_labels(project, "labelstudio", out, options)
    config = ElementTree.fromstring((out / "label_config.xml").read_text())
    taxonomy = config.find("Taxonomy")
    assert taxonomy is not None and taxonomy.get("toName") == config.find("Image").get("name")  # type: ignore[union-attr]
    tree = {c.get("value"): [s.get("value") for s in c.findall("Choice")] for c in taxonomy.findall("Choice")}
    assert tree == {"ants": ["red", "black"], "bees": []}
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == 6
    by_file = {Path(t["data"]["path"]).name: t for t in tasks}
    assert by_file["h1.png"]["data"]["image"].startswith("http://files.example/x/")
    (result,) = by_file["h1.png"]["annotations"][0]["result"]
    assert result["value"]["taxonomy"] == [["ants", "red"], ["ants", "black"]]
    assert result["from_name"] == taxonomy.get("name") and result["type"] == "taxonomy"
    assert "annotations" not in by_file["u1.png"]
    (pre,) = by_file["u1.png"]["predictions"]
    assert (pre["model_version"], pre["result"][0]["value"]["taxonomy"]) == ("m2-v1", [["bees"]])
    assert pre["score"] == pytest.approx(0.6)


def test_coco_categories_carry_the_main_class_as_supercategory(project: Project, tmp_path: Path) -> None:
    export_labels(project, "coco", tmp_path / "coco.json", ExportOptions(predictions=True))
    document = json.loads((tmp_path / "coco.json").read_text())
    categories = {c["id"]: (c["supercategory"], c["name"]) for c in document["categories"]}
    assert sorted(categories.values()) == [("ants", "ants"), ("ants", "black"), ("ants", "red"), ("bees", "bees")]
    images = {image["id"]: Path(image["file_name"]).name for image in document["images"]}
    got = {images[a["image_id"]]: categories[a["category_id"]] for a in document["annotations"]}
    assert got == {
        "a1.png": ("ants", "red"),
        "a2.jpg": ("ants", "ants"),  # main class only: the main class's own category
        "b1.png": ("bees", "bees"),
        "h1.png": ("ants", "ants"),  # partial: the main class, with both tags in sub_classes
        "h2.png": ("bees", "bees"),
    }
    assert {images[p["image_id"]]: p["score"] for p in document["predictions"]}["b1.png"] == pytest.approx(0.9)


def test_cli_export_and_import(project: Project, tmp_path: Path) -> None:
    from click.testing import CliRunner

    runner = CliRunner()
    out = tmp_path / "hf"
    result = runner.invoke(
        cli, ["export", str(project.root), "--format", "hf", "--out", str(out), "--predictions", "--include-unlabelled"]
    )
    assert result.exit_code == 0, result.output
    assert "exported 5 labelled and 1 unlabelled images" in result.output
    fresh = new_project(tmp_path / "fresh")
    result = runner.invoke(cli, ["import", str(fresh.root), "--manifest", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "added 6" in result.output and "pre-labelled 5" in result.output
    assert labels_by_sha(fresh, tmp_path / "a") == labels_by_sha(project, tmp_path / "b")


def test_read_project_gives_dataframes_without_writing(project: Project, tmp_path: Path) -> None:
    import pandas as pd

    import labeller

    database = project.root / "labeller.db"
    before = database.stat().st_mtime_ns
    frames = labeller.read_project(project.root)
    assert database.stat().st_mtime_ns == before
    assert len(frames.images) == 6 and len(frames.labels) == 5 and len(frames.versions) == 1
    merged = frames.labels.merge(frames.images, on="image_id")
    by_name = {Path(p).name: row for p, row in zip(merged["path"], merged.itertuples(), strict=True)}
    assert (by_name["h1.png"].annotator, by_name["h1.png"].sub_classes) == ("alice", ["red", "black"])
    assert by_name["a1.png"].leaf == "ants/red" and pd.isna(by_name["a2.jpg"].leaf)  # partial: no leaf
    assert len(frames.predictions) == 6
    assert frames.predictions[["p_leaf:ants/red", "p_leaf:ants/black", "p_leaf:bees"]].sum(axis=1).round(6).eq(1).all()
    # margin is the usual p1 - p2 of the main-class probabilities, as exported, not the stored 1 - (p1 - p2).
    main = frames.predictions[["p_main:ants", "p_main:bees"]].to_numpy()
    assert frames.predictions["margin"].to_numpy() == pytest.approx(abs(main[:, 0] - main[:, 1]), abs=1e-9)
    assert bool(frames.versions.loc[0, "active"]) and frames.versions.loc[0, "name"] == "m2-v1"
