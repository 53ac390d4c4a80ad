"""The command line end to end, as a user runs it: init, taxonomy, import, status, export, demo."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from db.engine import unit_of_work
from db.queries.annotations import current_labels
from db.queries.images import image_count
from db.queries.taxonomy import taxonomy_mapping
from db.schema import Image
from labeller.cli import cli
from labeller.demo import DEMO_TRAINING, LOOPS, NO_LOOPS, TRUTH_FILE, create_demo_project
from labeller.project import open_project
from tests.images import write_image, write_png_bomb

TAXONOMY = """
[[main]]
name = "ants"
key = "1"
  [[main.sub]]
  name = "red"
  key = "q"
[[main]]
name = "bees"
key = "2"
"""


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    return result.exit_code, result.output


def test_init_taxonomy_import_status_export(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    assert run("init", project)[0] == 0
    code, output = run("init", project)
    assert code == 1 and "already a project" in output

    (tmp_path / "taxonomy.toml").write_text(TAXONOMY)
    code, output = run("taxonomy", project, "--file", tmp_path / "taxonomy.toml")
    assert code == 0 and "added main class 'ants'" in output
    code, output = run("taxonomy", project, "--show")
    assert code == 0 and 'name = "red"' in output and 'key = "q"' in output

    (tmp_path / "bad.toml").write_text(TAXONOMY.replace('key = "2"', 'key = "r"'))
    code, output = run("taxonomy", project, "--file", tmp_path / "bad.toml")
    assert code == 1 and "reserved by Streamlit" in output and "nothing was changed" in output

    data = tmp_path / "data"
    write_image(data / "ants" / "red" / "a.png", 1)
    write_image(data / "ants" / "b.jpg", 2)
    write_image(data / "bees" / "c.webp", 3)
    write_png_bomb(data / "bees" / "bomb.png")
    code, output = run("import", project, data, "--labels-from-folders", "--no-progress")
    assert code == 0, output
    assert "added 3, duplicates 0, skipped 1, pre-labelled 3" in output
    assert "decompression bomb" in output and "bomb.png" in output
    code, output = run("import", project, data, "--no-progress")
    assert "added 0, duplicates 3, skipped 1" in output

    code, output = run("status", project, "--json")
    status = json.loads(output)
    assert (status["images"], status["labelled"], status["unlabelled"]) == (3, 3, 0)
    assert {c["main_class"]: c["labelled"] for c in status["classes"]} == {"ants": 2, "bees": 1}
    assert status["annotators"][0]["name"] == "import"
    assert status["images_by_current_decision"] == {"label": 3, "unsure": 0, "skip": 0}
    code, output = run("status", project)
    assert code == 0 and "images: 3 (3 labelled, 0 unlabelled" in output

    code, output = run("export", project, "--format", "csv", "--out", tmp_path / "labels.csv")
    assert code == 0 and "exported 3 labelled images" in output
    with (tmp_path / "labels.csv").open(newline="") as stream:
        rows = {Path(row["path"]).name: (row["main_class"], row["sub_classes"]) for row in csv.DictReader(stream)}
    assert rows == {"a.png": ("ants", "red"), "b.jpg": ("ants", ""), "c.webp": ("bees", "")}
    code, output = run("export", project, "--format", "imagefolder", "--out", tmp_path / "folder")
    assert code == 0 and "3 hard-linked" in output


def test_clear_errors_for_bad_arguments(tmp_path: Path) -> None:
    code, output = run("status", tmp_path)
    assert code == 1 and "not a Latent Labeller project" in output
    run("init", tmp_path / "p")
    code, output = run("import", tmp_path / "p")
    assert code == 2 and "at least one PATH or --manifest" in output
    (tmp_path / "m.csv").write_text("file\nx.png\n")
    code, output = run("import", tmp_path / "p", "--manifest", tmp_path / "m.csv", "--no-progress")
    assert code == 1 and "'path' column" in output and "nothing was imported" in output
    code, output = run("taxonomy", tmp_path / "p")
    assert code == 2 and "--file" in output
    code, output = run("evaluate", tmp_path / "p", "--json", tmp_path / "e.json")
    assert code == 1 and "no taxonomy yet" in output and "Traceback" not in output


def test_demo_project(tmp_path: Path) -> None:
    code, output = run("demo", tmp_path / "demo", "--no-serve")
    assert code == 0, output
    project = open_project(tmp_path / "demo")
    with unit_of_work(project.engine) as session:
        assert taxonomy_mapping(session) == {"loops": list(LOOPS), "no loops": list(NO_LOOPS)}
        assert image_count(session) == 1797
        labels = list(current_labels(session))
        # Inside the project folder: stored relative, so the folder can move.
        assert session.scalar(select(Image.path).limit(1)).startswith("images/")
    assert len(labels) == 30
    assert sum(1 for label in labels if not label.tags) == 5
    assert project.settings.training == DEMO_TRAINING  # fast enough to retrain on a CPU
    assert {label.annotator for label in labels} == {"demo"}
    pngs = sorted((tmp_path / "demo" / "images").glob("*.png"))
    assert len(pngs) == 1797
    with (tmp_path / "demo" / TRUTH_FILE).open(newline="") as stream:
        truth = list(csv.DictReader(stream))
    assert len(truth) == 1797 and all((row["class"] == "loops") == (row["tags"] in LOOPS) for row in truth)

    # Re-running reuses the project: nothing added, nothing labelled twice.
    again = create_demo_project(tmp_path / "demo")
    with unit_of_work(again.engine) as session:
        assert image_count(session) == 1797
        assert len(list(current_labels(session))) == 30


def test_init_with_a_database_url_and_status_on_each_dialect(tmp_path: Path, database_url: str) -> None:
    code, output = run("init", tmp_path / "p", "--db", database_url)
    assert code == 0, output
    assert open_project(tmp_path / "p").database_url == database_url
    write_image(tmp_path / "data" / "bees" / "x.png", 1)
    code, output = run("import", tmp_path / "p", tmp_path / "data", "--labels-from-folders", "--create-classes")
    assert code == 0 and "added 1" in output and "pre-labelled 1" in output
    code, output = run("status", tmp_path / "p", "--json")
    status = json.loads(output)
    assert (status["images"], status["labelled"], status["classes"][0]["main_class"]) == (1, 1, "bees")


def test_the_command_line_starts_without_loading_the_model_libraries() -> None:
    """torch, umap-learn and scikit-learn load only in the commands that compute: ``labeller --help``,
    ``status`` or ``models`` answered after 2.7 s of imports when the image decoder pulled in torch."""
    code = "import sys; import labeller.cli; print(sorted({'torch', 'umap', 'sklearn'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
