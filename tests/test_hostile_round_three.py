"""Issue 23, items 6-10: hostile inputs that crashed, hung or were accepted unchecked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from db.engine import unit_of_work
from db.queries import jobs as job_queries
from labeller.cli import cli
from labeller.jobs.params import JobParamsError, TrainParams
from labeller.project import (
    DATABASE_PASSWORD_ENV,
    DATABASE_URL_ENV,
    SETTINGS_FILE,
    ProjectError,
    init_project,
    open_project,
)


@pytest.fixture(autouse=True)
def _no_database_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    monkeypatch.delenv(DATABASE_PASSWORD_ENV, raising=False)


def clean_failure(arguments: list[str]) -> str:
    """The CLI's output for a refused command: exit code 1 or 2 (usage), no traceback."""
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code in (1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


# --- item 9: settings and train options ---------------------------------------------------------------


def test_classifier_device_and_huge_epochs_in_the_settings_are_refused_at_open(tmp_path: Path) -> None:
    project = init_project(tmp_path / "p")
    project.engine.dispose()
    (project.root / SETTINGS_FILE).write_text(
        'name = "p"\n[training]\nclassifier = "bogus"\ndevice = "tpu:9"\nepochs = 100000000000000000000\n'
    )
    with pytest.raises(ProjectError) as raised:
        open_project(project.root)
    message = str(raised.value)
    assert "3 problem(s)" in message
    assert "[training] classifier must be one of auto, cnn" in message
    assert "[training] device must be auto, cpu, cuda, cuda:N or mps, got 'tpu:9'" in message
    assert "[training] epochs must be between 1 and 10000" in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps", "CUDA:0"])
def test_real_device_names_pass_the_settings_check(tmp_path: Path, device: str) -> None:
    project = init_project(tmp_path / "p")
    project.settings.training.device = device
    project.settings.training.classifier = "linear"
    project.settings.training.epochs = 10_000
    project.save_settings()
    project.engine.dispose()
    assert open_project(project.root).settings.training.device == device


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--epochs", "99999999999999999999", "--epochs"),
        ("--epochs", "10001", "--epochs"),
        ("--device", "tpu:9", "must be auto, cpu, cuda, cuda:N or mps"),
        ("--device", "cuda:x", "must be auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_train_refuses_absurd_options_and_queues_nothing(
    tmp_path: Path, option: str, value: str, expected: str
) -> None:
    project = init_project(tmp_path / "p")
    output = clean_failure(["train", str(project.root), option, value])
    assert expected in output
    with unit_of_work(project.engine) as session:
        assert job_queries.list_jobs(session) == []


def test_a_queued_job_with_absurd_parameters_fails_clearly() -> None:
    with pytest.raises(JobParamsError) as raised:
        TrainParams.from_params({"epochs": 10**20, "device": "tpu:9", "classifier": "bogus"})
    message = str(raised.value)
    assert "epochs must be at most 10000" in message
    assert "device must be auto, cpu" in message
    assert "classifier must be auto or one of" in message


# --- item 8: tracebacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        ["export", "{root}", "--out", "{root}/x.csv", "--predictions", "--model-version", "99999999999999999999"],
        ["export", "{root}", "--out", "{root}/x.csv", "--predictions", "--model-version", "0"],
        ["jobs", "{root}", "list", "--limit", "99999999999999999999"],
    ],
)
def test_huge_ids_on_the_command_line_are_usage_errors(tmp_path: Path, arguments: list[str]) -> None:
    project = init_project(tmp_path / "p")
    output = clean_failure([argument.format(root=project.root) for argument in arguments])
    assert "is not in the range 1<=x<=" in output


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://someone:secret@localhost/db", "unsupported database mysql://someone:***@localhost/db"),
        ("postgresql+asyncpg://someone@localhost/db", "unsupported database"),
        ("sqlite://", "is an in-memory SQLite database"),
        ("sqlite:///:memory:", "is an in-memory SQLite database"),
    ],
)
def test_unsupported_database_urls_are_refused_naming_the_supported_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    project = init_project(tmp_path / "p")
    project.engine.dispose()
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    with pytest.raises(ProjectError, match="postgresql\\+psycopg://") as raised:
        open_project(project.root)
    assert expected in str(raised.value) and "secret" not in str(raised.value)
    output = clean_failure(["status", str(project.root)])
    assert expected in output and "sqlite:////" in output


def test_init_refuses_an_unsupported_database_before_creating_anything(tmp_path: Path) -> None:
    output = clean_failure(["init", str(tmp_path / "p"), "--db", "mysql://someone:secret@localhost/db"])
    assert "unsupported database" in output and "secret" not in output
    assert not (tmp_path / "p").exists()


# --- item 7: one bad record blocks a whole workflow ------------------------------------------------------


def test_a_card_decision_for_a_missing_image_is_refused_alone_and_later_ones_save(
    tmp_path: Path, database_url: str
) -> None:
    from db.queries.annotations import current_labels
    from db.queries.annotators import get_or_create_annotator
    from labeller.app.services import common
    from labeller.app.services.label_session import LabelSession
    from tests.e2e.project_factory import make_app_project

    project = make_app_project(tmp_path / "project", images=6, database_url=database_url)
    with unit_of_work(project.engine) as session:
        taxonomy = common.load_taxonomy(session)
        annotator = get_or_create_annotator(session, "a").id
    main = taxonomy.main_classes[0].id
    card = LabelSession(annotator, "entropy")
    card.refill(project.engine, lease_seconds=600)
    real, other = card.window[0].image_id, card.window[1].image_id

    def decision(op: str, image: int, **extra: int) -> dict[str, object]:
        return {"op": op, "kind": "label", "image": image, "after": 0, "step": 1, "main": main, **extra}

    # As replayed from the browser's storage: ids of no image, past int4 and past int8, then a real decision.
    outbox = {
        "ops": [
            decision("gone", 999_999),
            decision("int8", 2**63),
            decision("huge", 10**20),
            decision("mv", other, mv=2**63),
            decision("ok", real),
        ]
    }
    for applied in ("applied", "duplicate"):  # a reload resends the whole outbox
        results = {result.op_id: result for result in card.receive(project.engine, outbox, taxonomy, lease_seconds=600)}
        assert {op: result.status for op, result in results.items()} == {
            "gone": "rejected",
            "int8": "rejected",
            "huge": "rejected",
            "mv": applied,
            "ok": applied,
        }
        assert results["gone"].message == "Image 999999 is not in this project: nothing applied."
        assert "names an id no row can have" in results["int8"].message
        card = LabelSession(annotator, "entropy")  # a reload: a fresh session, the same outbox
    with unit_of_work(project.engine) as session:
        assert {label.image_id for label in current_labels(session)} == {real, other}


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_a_truncated_pixel_cache_shard_counts_as_missing_and_is_recomputed(tmp_path: Path, keep: float) -> None:
    from PIL import Image as PILImage

    from labeller.training_data import PixelCache

    paths = []
    for index in range(4):
        path = tmp_path / f"{index}.png"
        PILImage.new("RGB", (20, 20), (index * 60, 10, 200)).save(path)
        paths.append(path)
    hashes = [f"{index:064x}" for index in range(4)]
    cache = PixelCache(tmp_path / "cache", image_size=16, channels=3)
    expected, failures = cache.get(hashes, paths)
    assert failures == {}
    [shard] = cache._shards()
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * keep)])  # a disk-full or killed write, as the issue found
    again, failures = PixelCache(tmp_path / "cache", image_size=16, channels=3).get(hashes, paths)
    assert failures == {} and np.array_equal(again, expected)
    assert not shard.exists()  # removed, so the next job does not trip over it again


def test_one_name_length_rule_on_every_database_checked_before_writing(tmp_path: Path, database_url: str) -> None:
    from sqlalchemy import select

    from db.queries.annotators import AnnotatorError, get_or_create_annotator
    from db.queries.taxonomy import MainClassEntry, SubClassEntry, TaxonomyError, TaxonomySpec, apply_taxonomy_spec
    from db.schema import MAX_NAME_LENGTH, Annotator, Image, MainClass
    from labeller.ingest import ImportOptions, IngestError, import_images
    from tests.images import write_image

    project = init_project(tmp_path / "project", database_url=database_url)
    long, fits = "x" * (MAX_NAME_LENGTH + 1), "y" * MAX_NAME_LENGTH
    with unit_of_work(project.engine) as session:
        assert get_or_create_annotator(session, fits).name == fits
        with pytest.raises(AnnotatorError, match="201 characters long: at most 200"):
            get_or_create_annotator(session, long)
    for spec in (
        TaxonomySpec((MainClassEntry(long),)),
        TaxonomySpec((MainClassEntry("ants", sub_classes=(SubClassEntry(long),)),)),
    ):
        with pytest.raises(TaxonomyError, match="at most 200 are allowed"), unit_of_work(project.engine) as session:
            apply_taxonomy_spec(session, spec)
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, TaxonomySpec((MainClassEntry(fits), MainClassEntry("ants"))))

    # One row's annotator too long: the whole file is refused before any image or label is written.
    for index in range(5):
        write_image(tmp_path / "data" / f"{index}.png", index)
    rows = [f"data/{index}.png,ants,,someone,2024-01-0{index + 1}T00:00:00" for index in range(5)]
    rows[3] = f"data/3.png,ants,,{'z' * 300},2024-01-04T00:00:00"
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,main_class,sub_classes,annotator,labelled_at\n" + "\n".join(rows) + "\n")
    with pytest.raises(IngestError, match=r"nothing was imported: 1 name\(s\) too long:\n  labels.csv line 5: "):
        import_images(project, manifest=manifest, options=ImportOptions(progress=False))
    # And a class name too long for --create-classes, from a plain pre-label row.
    manifest.write_text(f"path,class\ndata/0.png,{'w' * 250}\n")
    with pytest.raises(IngestError, match="main class 'wwww"):
        import_images(project, manifest=manifest, options=ImportOptions(progress=False, create_classes=True))
    with unit_of_work(project.engine) as session:
        assert session.scalars(select(Image)).all() == []
        assert {row.name for row in session.scalars(select(Annotator))} == {fits}
        assert {row.name for row in session.scalars(select(MainClass))} == {fits, "ants"}


def test_long_names_stored_before_the_rule_stay_usable_on_sqlite(tmp_path: Path) -> None:
    from sqlalchemy import insert

    from db.queries.annotators import get_or_create_annotator
    from db.queries.taxonomy import ensure_class
    from db.schema import Annotator, MainClass

    project = init_project(tmp_path / "project")
    old = "o" * 100_000  # what SQLite accepted before
    with unit_of_work(project.engine) as session:
        session.execute(insert(Annotator).values(name=old))
        session.execute(insert(MainClass).values(name=old, position=0))
    with unit_of_work(project.engine) as session:
        assert get_or_create_annotator(session, old).name == old
        main, _ = ensure_class(session, old)
        assert main.name == old


# --- item 10: wrong or unbounded results -------------------------------------------------------------------


def test_evaluate_refuses_a_taxonomy_of_one_main_class_even_with_sub_classes(tmp_path: Path) -> None:
    from labeller.ingest import ImportOptions, import_images
    from tests.project_factory import write_class_images

    project = init_project(tmp_path / "project")
    # photos/animal/{dark,bright}/*.png: one main class, two labelled sub-classes (reported 100% before).
    write_class_images(tmp_path / "photos" / "animal", per_class=8, size=16)
    options = ImportOptions(labels_from_folders=True, create_classes=True, progress=False)
    import_images(project, [tmp_path / "photos"], options=options)
    fast = ["--models", "supervised", "--seeds", "1", "--epochs", "1", "--image-size", "16", "--device", "cpu"]
    out = ["--json", str(tmp_path / "eval" / "eval.json")]
    plan = ["--budgets", "6", "--initial", "4", "--strategies", "random"]
    output = clean_failure(["evaluate", str(project.root), *plan, *fast, *out])
    assert "the taxonomy has one main class ('animal')" in output and "100% by construction" in output
    assert not (tmp_path / "eval" / "eval.json").exists()


def test_folder_exports_never_merge_classes_whose_folder_names_collide(tmp_path: Path) -> None:
    import csv
    import json

    from db.queries.annotations import record_annotation
    from db.queries.annotators import get_or_create_annotator
    from db.queries.taxonomy import (
        MainClassEntry,
        SubClassEntry,
        TaxonomySpec,
        apply_taxonomy_spec,
        main_class_by_name,
        sub_class_by_name,
    )
    from db.schema import AnnotationKind, Image
    from labeller.export import ExportOptions, export_labels
    from labeller.ingest import ImportOptions, import_images
    from tests.images import write_image

    project = init_project(tmp_path / "project")
    project.settings.labelling.audit_fraction = 0.0
    # Each pair met in one folder of some layout: '.x' is written '_.x'; the leaf dog/pug is 'dog.pug';
    # '_unlabelled' and 'metadata.csv' are the export's own; 'Cat' and 'cat' are one folder on macOS.
    labels: list[tuple[str, str | None]] = [
        (".x", None),
        ("_.x", None),
        ("dog", "pug"),
        ("dog.pug", None),
        ("dog", "_any"),
        ("_unlabelled", None),
        ("metadata.csv", None),
        ("labels.csv", None),
        ("Cat", None),
        ("cat", None),
    ]
    subs: dict[str, list[str]] = {}
    for main, sub in labels:
        subs.setdefault(main, [])
        if sub:
            subs[main].append(sub)
    spec = TaxonomySpec(
        tuple(MainClassEntry(main, sub_classes=tuple(map(SubClassEntry, s))) for main, s in subs.items())
    )
    with unit_of_work(project.engine) as session:
        apply_taxonomy_spec(session, spec)
    for index in range(len(labels) + 1):  # one more: a label of dog alone (no single sub-class)
        write_image(tmp_path / "data" / f"{index:02d}.png", index + 50)
    import_images(project, [tmp_path / "data"], options=ImportOptions(progress=False))
    with unit_of_work(project.engine) as session:
        annotator = get_or_create_annotator(session, "ann").id
        images = {Path(image.path).name: image.id for image in session.scalars(select(Image))}
        for index, (main, sub) in enumerate([*labels, ("dog", None)]):
            record_annotation(
                session,
                image_id=images[f"{index:02d}.png"],
                annotator_id=annotator,
                kind=AnnotationKind.LABEL,
                main_class_id=main_class_by_name(session, main).id,
                sub_class_ids=[sub_class_by_name(session, main, sub).id] if sub else [],
            )
    for export_format, layout, manifest in [
        ("imagefolder", "main", "labels.csv"),
        ("hf", "main", "metadata.csv"),
        ("hf", "leaf", "metadata.csv"),
        ("hf", "main/sub", "metadata.csv"),
    ]:
        out = tmp_path / f"{export_format}-{layout.replace('/', '-')}"
        summary = export_labels(project, export_format, out, ExportOptions(layout=layout))  # type: ignore[arg-type]
        assert summary.rows == len(labels) + 1
        with (out / manifest).open(newline="") as stream:
            rows = list(csv.DictReader(stream))
        assert (out / manifest).is_file()
        # Every folder holds the images of one label only (by main class, and by leaf where the layout has one).
        by_folder: dict[str, set[tuple[str, str]]] = {}
        for row in rows:
            exported = row.get("exported_file") or row["file_name"]
            assert (out / exported).is_file()
            tags = json.loads(row["sub_classes"]) if export_format == "hf" else row["sub_classes"].split("|")
            tag = tags[0] if len(tags) == 1 and tags[0] else ""
            by_main_only = export_format == "hf" and layout == "main"
            folder = str(Path(exported).parent).casefold()
            by_folder.setdefault(folder, set()).add((row["main_class"], "" if by_main_only else tag))
        merged = {folder: found for folder, found in by_folder.items() if len(found) > 1}
        assert merged == {}, (export_format, layout, merged)
        assert "_.x" in {Path(folder).parts[0] for folder in by_folder}  # a name needing no change keeps it


# --- item 6: inputs other than images have limits --------------------------------------------------------


def _special_file(tmp_path: Path, kind: str, name: str) -> Path:
    """A path called ``name`` that is /dev/zero (by a link), a FIFO, or a sparse file over the caps."""
    import os

    path = tmp_path / name
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        with path.open("wb") as stream:
            stream.truncate(3 * 1024**3)  # 3 GB, no disk used
    return path


@pytest.fixture
def _no_hang() -> Iterator[None]:
    """Fail instead of hanging for ever (a FIFO opened for reading blocks until a writer comes)."""
    import signal

    def hung(_signal: int, _frame: object) -> None:
        raise TimeoutError("hung reading a special file")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.usefixtures("_no_hang")
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "sparse"])
@pytest.mark.parametrize("name", ["labels.csv", "labels.json", "labels.jsonl"])
def test_a_manifest_must_be_a_regular_file_of_sane_size(tmp_path: Path, kind: str, name: str) -> None:
    project = init_project(tmp_path / "project")
    manifest = _special_file(tmp_path, kind, name)
    output = clean_failure(["import", str(project.root), "--manifest", str(manifest)])
    expected = "too large" if kind == "sparse" else "not a regular file"
    assert f"cannot read the manifest {manifest}: {expected}" in output


@pytest.mark.usefixtures("_no_hang")
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "sparse"])
def test_a_taxonomy_file_must_be_a_regular_file_of_sane_size(tmp_path: Path, kind: str) -> None:
    project = init_project(tmp_path / "project")
    taxonomy = _special_file(tmp_path, kind, "taxonomy.toml")
    output = clean_failure(["taxonomy", str(project.root), "--file", str(taxonomy)])
    expected = "too large: 3,221,225,472 bytes" if kind == "sparse" else "not a regular file"
    assert f"cannot read {taxonomy}: {expected}" in output


@pytest.mark.usefixtures("_no_hang")
def test_a_manifest_row_naming_a_special_file_is_skipped(tmp_path: Path) -> None:
    from labeller.ingest import ImportOptions, import_images

    project = init_project(tmp_path / "project")
    zero = _special_file(tmp_path, "dev-zero", "zero.png")
    pipe = _special_file(tmp_path, "fifo", "pipe.png")
    manifest = tmp_path / "labels.csv"
    manifest.write_text(f"path,main_class,annotator,labelled_at\n{zero},ants,a,2024-01-01\n{pipe},ants,a,2024-01-01\n")
    report = import_images(project, manifest=manifest, options=ImportOptions(progress=False, create_classes=True))
    assert report.added == 0 and len(report.skipped) == 2


def test_the_train_page_opens_with_any_epochs_the_settings_allow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labeller.project import open_project
    from tests.e2e.project_factory import make_app_project
    from tests.test_app_pages import open_page

    project = make_app_project(tmp_path / "project", images=6)
    project.settings.training.epochs = 10_000  # the settings' upper bound; the page's box stopped at 1,000
    project.save_settings()
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    app = open_page(open_project(project.root), "train")
    assert not app.exception, app.exception
    assert [box.value for box in app.number_input if box.label == "Epochs"] == [10_000]
