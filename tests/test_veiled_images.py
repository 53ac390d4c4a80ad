"""With blur on, the browser receives veiled renditions, blurred on the server, never the full picture until
the annotator reveals it (issue 12 item 8); the annotator's blur strength makes the rendition (issue 13)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from streamlit.testing.v1 import AppTest

from db.engine import unit_of_work
from db.queries import app_views
from db.queries.annotators import get_or_create_annotator
from labeller import thumbnails
from labeller.app import reveal
from labeller.app.services import common, grid, renditions
from labeller.app.services.label_session import LabelSession, image_data_url, parse_reveal_request
from labeller.app.state import Identity
from labeller.project import Project
from labeller.thumbnails import Veil, veiled_path
from tests.e2e.project_factory import make_app_project

MAIN_APP = str(Path(__file__).resolve().parents[1] / "labeller" / "app" / "main.py")
LEASE = 600


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = make_app_project(tmp_path / "project", images=24)
    monkeypatch.setenv("LABELLER_PROJECT", str(project.root))
    return project


def photo(path: Path, size: tuple[int, int] = (768, 600)) -> Path:
    """A picture with detail at every scale: noise, stripes and a sharp-edged square."""
    rng = np.random.default_rng(7)
    width, height = size
    pixels = rng.integers(0, 256, (height, width, 3)).astype(np.float32) * 0.5
    pixels[:, ::6] += 100
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (250, 30, 30)
    PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=95)
    return path


def high_frequency(picture: PILImage.Image, size: tuple[int, int]) -> float:
    """Mean squared difference of neighbouring grey pixels, at ``size`` (as the browser scales it)."""
    grey = np.asarray(picture.convert("L").resize(size, PILImage.Resampling.BILINEAR), dtype=np.float64)
    return float(np.mean(np.diff(grey, axis=0) ** 2) + np.mean(np.diff(grey, axis=1) ** 2))


def decoded(data_url: str) -> PILImage.Image:
    header, payload = data_url.split(",", 1)
    assert header.startswith("data:image/")
    return PILImage.open(io.BytesIO(base64.b64decode(payload)))


def mean_difference(picture: PILImage.Image, full: PILImage.Image) -> float:
    scaled = picture.convert("RGB").resize(full.size, PILImage.Resampling.BILINEAR)
    return float(np.mean(np.abs(np.asarray(scaled, np.float64) - np.asarray(full.convert("RGB"), np.float64))))


# ----------------------------------------------------------------------------------------- renditions


def test_a_veiled_rendition_is_blurred_made_once_and_follows_the_strength(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = photo(tmp_path / "large.jpg")
    thumbs = tmp_path / "thumbs"
    full = PILImage.open(source)
    sha = "ab" * 32

    def veiled(veil: Veil) -> Path:
        return veiled_path(thumbs, sha, source, kind="large", veil=veil, shown_px=620)

    mild, strong = veiled(Veil(4)), veiled(Veil(40))
    assert mild != strong and {mild.parent, strong.parent} == {thumbs / "veiled" / "ab"}
    energy = {name: high_frequency(PILImage.open(path), full.size) for name, path in (("4", mild), ("40", strong))}
    sharp = high_frequency(full, full.size)
    # The stronger the setting, the less detail is left: nothing like the full picture at either.
    assert energy["40"] < energy["4"] < 0.2 * sharp
    assert energy["40"] < 0.01 * sharp
    assert mean_difference(PILImage.open(strong), full) > 20
    # A strong blur leaves nothing finer than its radius: the file is a small picture, a few kB.
    assert max(PILImage.open(strong).size) < 100 and strong.stat().st_size < 4000
    grey = veiled(Veil(22, greyscale=True))
    assert PILImage.open(grey).mode == "L" and grey.name.endswith("-b22g.jpg")

    # Made once: a second request reads the cached file.
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("made again")

    monkeypatch.setattr(thumbnails, "veil_pixels", fail)
    assert veiled(Veil(40)) == strong


def test_veil_radius_is_the_strength_on_screen_scaled_to_the_picture() -> None:
    assert thumbnails.veil_radius(22, 768, 620) == pytest.approx(27.25, rel=1e-3)
    assert thumbnails.veil_radius(22, 64, 180) == pytest.approx(7.82, rel=1e-3)


def test_pictures_in_memory_are_veiled_too() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert renditions.veil_array(pixels, None) is pixels
    veiled = renditions.veil_array(pixels, Veil(22))
    assert veiled.dtype == np.uint8 and veiled.ndim == 3
    size = (64, 64)
    assert high_frequency(PILImage.fromarray(veiled), size) < 0.05 * high_frequency(PILImage.fromarray(pixels), size)
    floats = renditions.veil_array(pixels[..., :1].astype(np.float32) / 255.0, Veil(22))
    assert floats.dtype == np.uint8 and floats.ndim == 2


# ----------------------------------------------------------------------------------------- the Label card


def new_session(project: Project, name: str = "ann") -> LabelSession:
    with unit_of_work(project.engine) as session:
        annotator_id = get_or_create_annotator(session, name).id
    label = LabelSession(annotator_id, "entropy")
    label.refill(project.engine, lease_seconds=LEASE)
    label.receive(project.engine, {"epoch": "card-1", "ops": []}, taxonomy(project), lease_seconds=LEASE)
    return label


def taxonomy(project: Project) -> common.TaxonomyView:
    with unit_of_work(project.engine) as session:
        return common.load_taxonomy(session)


def large_view(project: Project, image_id: int) -> Path:
    with unit_of_work(project.engine) as session:
        image = app_views.image_by_id(session, image_id)
        assert image is not None
        return common.large_view_file(project, image)


def card(project: Project, label: LabelSession, hide: str, **hiding: Any) -> dict[str, Any]:
    return label.card_data(project.engine, project, taxonomy(project), acks=[], hide=hide, storage="k", **hiding)


def test_with_blur_on_the_card_gets_veiled_pictures_and_a_full_one_only_when_it_asks(project: Project) -> None:
    label = new_session(project)
    data = card(project, label, "blurred")
    assert data["items"] and data["hide"] == "blurred"
    for item in data["items"]:
        full_file = large_view(project, item["id"])
        full = PILImage.open(full_file)
        sent = decoded(item["src"])
        assert item["src"] != image_data_url(full_file)
        assert high_frequency(sent, full.size) < 0.3 * high_frequency(full, full.size)
        assert "full" not in item
    # The card asks for the full picture of the image it reveals: it comes once, with that image only.
    shown = data["items"][0]["id"]
    label.request_full(parse_reveal_request({"image": shown, "nonce": "n-1"}))
    revealed = card(project, label, "blurred")
    with_full = [item for item in revealed["items"] if "full" in item]
    assert [item["id"] for item in with_full] == [shown]
    assert with_full[0]["full"] == image_data_url(large_view(project, shown))
    assert not any("full" in item for item in card(project, label, "blurred")["items"])
    # A request with a new nonce (a remounted card lost it) sends it again; a repeated one does not.
    label.request_full(parse_reveal_request({"image": shown, "nonce": "n-1"}))
    assert not any("full" in item for item in card(project, label, "blurred")["items"])
    label.request_full(parse_reveal_request({"image": shown, "nonce": "n-2"}))
    assert [item["id"] for item in card(project, label, "blurred")["items"] if "full" in item] == [shown]


def test_the_blur_strength_and_greyscale_make_what_the_card_gets(project: Project) -> None:
    label = new_session(project)
    first = card(project, label, "blurred", blur_px=4)["items"][0]
    full = PILImage.open(large_view(project, first["id"]))
    # Another strength: every picture goes again, blurred at that strength.
    again = card(project, label, "blurred", blur_px=60)["items"][0]
    assert again["id"] == first["id"] and again["src"] != first["src"]
    assert high_frequency(decoded(again["src"]), full.size) < high_frequency(decoded(first["src"]), full.size)
    grey = card(project, label, "blurred", blur_px=60, greyscale=True)["items"][0]
    assert decoded(grey["src"]).mode == "L"


def test_without_blur_the_card_gets_the_large_view_as_before(project: Project) -> None:
    label = new_session(project)
    for hide in ("plain", "grey"):
        label = new_session(project, f"ann-{hide}")
        data = card(project, label, hide)
        for item in data["items"]:
            assert item["src"] == image_data_url(large_view(project, item["id"])) and "full" not in item
    # Reveal for this session after blur: the full pictures go again in place of the veiled ones.
    veiled = card(project, label, "blurred")["items"]
    plain = card(project, label, "plain")["items"]
    assert [item["src"] for item in plain] == [image_data_url(large_view(project, item["id"])) for item in veiled]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"image": 3, "nonce": "a"}, (3, "a")),
        ({"image": 0, "nonce": "a"}, None),
        ({"image": "3", "nonce": "a"}, None),
        ({"image": 3, "nonce": ""}, None),
        ({"image": 3}, None),
        (None, None),
        ("3", None),
    ],
)
def test_a_reveal_request_from_the_browser_is_checked(raw: object, expected: object) -> None:
    assert parse_reveal_request(raw) == expected


# ----------------------------------------------------------------------------------------- tiles


def thumbnail(project: Project, image_id: int) -> Path:
    with unit_of_work(project.engine) as session:
        image = app_views.image_by_id(session, image_id)
        assert image is not None
        return common.display_file(project, image)


def test_grid_tiles_are_veiled_except_those_revealed_by_a_hold(project: Project) -> None:
    tiles, total = grid.grid_page(project.engine, project, mode="unlabelled", veil=Veil(22), unveiled={2})
    assert total == 24 and len(tiles) == 24
    for tile in tiles:
        full = thumbnail(project, tile.row.image_id)
        if tile.row.image_id == 2:
            assert tile.file == full
            continue
        assert tile.file.parent.parent.name == "veiled" and tile.file.read_bytes() != full.read_bytes()
        sent, original = PILImage.open(tile.file), PILImage.open(full)
        assert high_frequency(sent, original.size) < 0.3 * high_frequency(original, original.size)
    plain, _ = grid.grid_page(project.engine, project, mode="unlabelled")
    assert [tile.file for tile in plain] == [thumbnail(project, tile.row.image_id) for tile in plain]


def test_served_thumbnails_follow_the_strength(project: Project) -> None:
    files = {blur: renditions.served_thumbnails(project.engine, project, [1, 2], Veil(blur)) for blur in (4, 30)}
    assert files[4][1] != files[30][1]
    full = PILImage.open(thumbnail(project, 1))
    energy = {blur: high_frequency(PILImage.open(files[blur][1]), full.size) for blur in files}
    assert energy[30] < energy[4] < high_frequency(full, full.size)


def test_a_hold_reveal_request_is_read_safely() -> None:
    assert reveal.requested_reveal({"image": 5, "nonce": 1}) == 5
    for bad in ({"image": True}, {"image": -1}, {"image": "5"}, None, [5]):
        assert reveal.requested_reveal(bad) is None


def open_page(project: Project, page: str, **state: Any) -> tuple[AppTest, list[str]]:
    """The page through AppTest with blur on; returns it and the files given to ``st.image``."""
    import streamlit

    shown: list[str] = []
    original = streamlit.image

    def record(image: Any, *args: Any, **kwargs: Any) -> Any:
        shown.extend(str(i) for i in (image if isinstance(image, list) else [image]))
        return original(image, *args, **kwargs)

    with unit_of_work(project.engine) as session:
        annotator = get_or_create_annotator(session, "ann")
        identity = Identity(annotator.id, annotator.name)
    app = AppTest.from_file(MAIN_APP, default_timeout=30)
    app.session_state["identity"] = identity
    app.run()
    app.session_state["blur"] = True
    for key, value in state.items():
        app.session_state[key] = value
    streamlit.image = record
    try:
        app.switch_page(f"views/{page}.py").run()
    finally:
        streamlit.image = original
    assert not app.exception, app.exception
    return app, shown


def test_the_grid_page_sends_veiled_tiles_and_a_held_one_in_full(project: Project) -> None:
    _, shown = open_page(project, "grid", blur_px=30, held_reveals={3})
    assert len(shown) == 24
    full = {str(thumbnail(project, image_id)) for image_id in range(1, 25)}
    assert [path for path in shown if path in full] == [str(thumbnail(project, 3))]
    veiled = [Path(path) for path in shown if path not in full]
    assert len(veiled) == 23 and all(path.name.endswith("-thumb-b30.jpg") for path in veiled)


def test_the_label_pages_recent_list_sends_veiled_thumbnails(project: Project) -> None:
    from db.queries.annotations import record_annotation
    from db.schema import AnnotationKind

    main = taxonomy(project).main_classes[0].id
    with unit_of_work(project.engine) as session:
        who = get_or_create_annotator(session, "ann")
        for image_id in (1, 2):
            record_annotation(
                session, image_id=image_id, annotator_id=who.id, kind=AnnotationKind.LABEL, main_class_id=main
            )
    _, shown = open_page(project, "label")
    assert len(shown) == 2
    assert not {str(thumbnail(project, 1)), str(thumbnail(project, 2))} & set(shown)
