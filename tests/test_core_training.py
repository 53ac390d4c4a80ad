"""fit / score_pool / checkpoints on real data (scikit-learn's bundled digits), on the cpu, kept short."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from core.data import LabelledPool
from core.generation import samples_per_leaf
from core.images import load_images
from core.scoring import score_pool
from core.taxonomy import Taxonomy
from core.training import (
    Progress,
    TrainConfig,
    TrainingCancelled,
    TrainingDiverged,
    fit,
    load_checkpoint,
    nearest_neighbours,
    save_checkpoint,
)

DIGITS = Taxonomy.from_dict({str(d): [] for d in range(10)})
# Two main classes made of leaves: main-class probabilities must be sums of leaf probabilities.
LOOPS = Taxonomy.from_dict({"loops": ["0", "6", "8", "9"], "strokes": ["1", "2", "3", "4", "5", "7"]})
FAST = TrainConfig(model="m2", epochs=2, batch_size=64, labelled_batch_size=32, seed=3, patience=5)


def digits(count: int = 600) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    images = np.round(x.reshape(-1, 1, 8, 8) * 255 / 16).astype(np.uint8)
    return images[:count], y[:count]


def pool_with_labels(images: np.ndarray, y: np.ndarray, per_class: int, seed: int = 0) -> LabelledPool:
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])
    leaves = np.full(len(y), -1)
    leaves[chosen] = y[chosen]
    return LabelledPool.from_leaf_labels(images, leaves, 10)


@pytest.fixture(scope="module")
def small_fit():
    images, y = digits(400)
    pool = pool_with_labels(images, y, 5)
    return fit(pool, DIGITS, FAST), images


def test_training_on_digits_beats_chance_clearly():
    images, y = digits(1000)
    train, test = slice(0, 700), slice(700, 1000)
    pool = pool_with_labels(images[train], y[train], 10)
    config = TrainConfig(model="m2", epochs=12, val_fraction=0.0, seed=0)
    trained = fit(pool, DIGITS, config)
    scores = score_pool(trained, images[test], mc_samples=0)
    accuracy = (scores.main_probs.argmax(1) == y[test]).mean()
    assert accuracy > 0.6, accuracy  # chance is 0.1


def test_scores_have_the_right_shapes_and_main_is_the_sum_of_leaves():
    images, y = digits(300)
    leaf_of_digit = {int(name): i for i, name in enumerate(sub for _, sub in LOOPS.leaves)}
    leaves = np.array([leaf_of_digit[d] for d in y])
    leaves[np.random.default_rng(0).random(300) > 0.3] = -1
    pool = LabelledPool.from_leaf_labels(images, leaves, LOOPS.num_leaves)
    trained = fit(pool, LOOPS, replace(FAST, epochs=1))
    scores = score_pool(trained, images, batch_size=64, mc_samples=3)
    assert scores.leaf_probs.shape == (300, 10) and scores.main_probs.shape == (300, 2)
    np.testing.assert_allclose(scores.main_probs, scores.leaf_probs @ LOOPS.leaf_to_main_matrix(), atol=1e-6)
    np.testing.assert_allclose(scores.leaf_probs.sum(1), 1.0, atol=1e-5)
    for name in ("entropy", "leaf_entropy", "margin", "least_confidence", "bald", "disagreement", "novelty"):
        column = getattr(scores, name)
        assert column.shape == (300,) and np.isfinite(column).all(), name
    assert (scores.leaf_entropy >= scores.entropy - 1e-6).all()  # merging leaves never adds entropy
    assert scores.latent_mean.shape[0] == 300 and (scores.reconstruction_error > 0).all()
    assert scores.disagreement.max() > 0  # M2 has a generative posterior to disagree with


def test_bald_is_positive_with_mc_dropout(small_fit):
    trained, images = small_fit
    scores = score_pool(trained, images[:100], mc_samples=6)
    assert (scores.bald > 0).mean() > 0.9  # dropout masks disagree on nearly every image
    without = score_pool(trained, images[:100], mc_samples=0)
    assert (without.bald == 0).all()
    np.testing.assert_allclose(scores.leaf_probs, without.leaf_probs, atol=1e-5)  # MC leaves q(y|x) alone


def test_the_same_seed_gives_the_same_model_and_another_seed_does_not():
    images, y = digits(300)
    pool = pool_with_labels(images, y, 4)
    config = replace(FAST, epochs=1)
    first, second = fit(pool, DIGITS, config), fit(pool, DIGITS, config)
    other = fit(pool, DIGITS, replace(config, seed=4))
    a, b, c = (score_pool(t, images[:50], mc_samples=0).leaf_probs for t in (first, second, other))
    np.testing.assert_array_equal(a, b)
    assert first.metrics["val_nll"] == second.metrics["val_nll"]
    assert not np.allclose(a, c)


def test_nan_loss_raises_training_diverged(small_fit):
    trained, images = small_fit
    broken = copy.deepcopy(trained)
    with torch.no_grad():
        next(broken.model.parameters()).fill_(float("nan"))
    pool = pool_with_labels(images, digits(400)[1], 2)
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        fit(pool, DIGITS, FAST, init=broken)


def test_progress_is_reported_and_should_stop_cancels():
    images, y = digits(300)
    pool = pool_with_labels(images, y, 3)
    seen: list[Progress] = []
    fit(pool, DIGITS, replace(FAST, model="m1m2", epochs=2, m1_epochs=1), on_progress=seen.append)
    assert {p.phase for p in seen} == {"m1", "train"}
    last = seen[-1]
    assert last.epoch == 2 and last.epochs == 2 and last.step == last.steps_per_epoch
    assert "loss" in last.loss_terms and "val_accuracy" in last.validation
    assert last.images_per_second > 0 and last.eta_seconds == pytest.approx(0.0, abs=1e-6)
    assert seen[0].eta_seconds > 0

    polls = []

    def stop_after_three() -> bool:
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(TrainingCancelled):
        fit(pool, DIGITS, FAST, should_stop=stop_after_three)
    assert len(polls) == 4


def test_bad_input_gets_a_clear_error():
    images, y = digits(100)
    unlabelled = LabelledPool.from_leaf_labels(images, np.full(100, -1), 10)
    with pytest.raises(ValueError, match="no labelled images"):
        fit(unlabelled, DIGITS, FAST)
    with pytest.raises(ValueError, match="model must be one of"):
        fit(pool_with_labels(images, y, 2), DIGITS, replace(FAST, model="m3"))
    with pytest.raises(ValueError, match="leaves"):
        fit(pool_with_labels(images, y, 2), LOOPS.__class__.from_dict({"a": [], "b": []}), FAST)
    with pytest.raises(ValueError, match="admit no leaf"):
        LabelledPool(images, np.zeros((100, 10), dtype=bool), np.ones(100, dtype=bool))
    with pytest.raises(ValueError, match="consistency_view must be one of"):
        fit(pool_with_labels(images, y, 2), DIGITS, replace(FAST, consistency_view="mixup"))
    with pytest.raises(ValueError, match="balance must be auto or a number >= 0"):
        fit(pool_with_labels(images, y, 2), DIGITS, replace(FAST, balance=-1.0))


def test_nearest_neighbours_match_scikit_learn():
    from sklearn.neighbors import NearestNeighbors

    images, _ = digits(300)
    found = nearest_neighbours(torch.from_numpy(images), 5, chunk=64)  # several chunks
    flat = images.reshape(300, -1).astype(np.float64) / 255
    _, expected = NearestNeighbors(n_neighbors=6).fit(flat).kneighbors(flat)
    assert found.shape == (300, 5) and not (found == np.arange(300)[:, None]).any()  # never itself
    agree = np.mean([len(set(a) & set(b[1:])) / 5 for a, b in zip(found, expected, strict=True)])
    assert agree > 0.98  # exact up to ties in distance
    # A large pool searches a random reference sample: still never itself, always from the sample.
    sampled = nearest_neighbours(torch.from_numpy(images), 5, chunk=64, max_reference=100)
    assert sampled.shape == (300, 5) and not (sampled == np.arange(300)[:, None]).any()
    assert len(np.unique(sampled)) <= 100


def test_neighbour_consistency_and_balance_train_and_are_reported():
    images, y = digits(400)
    seen: list[Progress] = []
    config = replace(FAST, consistency=20.0, balance=20.0, val_fraction=0.0)
    trained = fit(pool_with_labels(images, y, 3), DIGITS, config, on_progress=seen.append)
    assert trained.metrics["consistency_view"] == "neighbour"  # auto for tiny images
    terms = seen[-1].loss_terms
    assert terms["consistency"] > 0 and terms["balance"] >= 0
    photos = TrainConfig(consistency=1.0)
    from core.training.build import _resolved

    assert _resolved(photos, (3, 64, 64))["consistency_view"] == "augment"


def test_small_images_are_not_cropped_or_flipped_and_photos_are():
    """A flip changes a glyph's class: under 32 px (28 px digits too) pixel models train on the images as
    they are, with neighbours as the consistency view; photos get crops and flips."""
    from core.training.build import _resolved

    for small in ((1, 8, 8), (1, 28, 28), (3, 31, 31)):
        assert _resolved(TrainConfig(), small)["augment"] == "none"
        assert _resolved(TrainConfig(), small)["consistency_view"] == "neighbour"
    assert _resolved(TrainConfig(), (3, 32, 32))["augment"] == "crop_flip"
    assert _resolved(TrainConfig(augment="shift"), (1, 28, 28))["augment"] == "shift"


def test_checkpoint_round_trip_is_atomic(small_fit, tmp_path, monkeypatch):
    trained, images = small_fit
    path = save_checkpoint(trained, tmp_path / "models" / "v1.pt")
    assert [p.name for p in path.parent.iterdir()] == ["v1.pt"]  # no temporary file left behind
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.taxonomy == trained.taxonomy and loaded.config == trained.config
    assert loaded.temperature == trained.temperature and loaded.metrics == trained.metrics
    before = score_pool(trained, images[:64], mc_samples=0)
    after = score_pool(loaded, images[:64], mc_samples=0)
    np.testing.assert_allclose(before.leaf_probs, after.leaf_probs, atol=1e-6)
    np.testing.assert_allclose(before.novelty, after.novelty)

    # A write that fails half-way keeps the old checkpoint and leaves no temporary file.
    def failing_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(trained, path)
    monkeypatch.undo()
    assert [p.name for p in path.parent.iterdir()] == ["v1.pt"]
    assert load_checkpoint(path, device="cpu").temperature == trained.temperature
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_load_images_applies_exif_orientation(tmp_path: Path):
    # A 20 x 10 (wide) photo whose EXIF says "rotate 90": it must arrive tall, left half red -> top red.
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, :10] = (255, 0, 0)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    out = load_images([tmp_path / "rotated.jpg", tmp_path / "plain.png"], size=16)
    assert out.shape == (2, 3, 16, 16) and out.dtype == np.uint8
    rotated = out[0].astype(int)
    assert rotated[0, :4].mean() > 200 and rotated[0, -4:].mean() < 60  # red on top after rotation
    with pytest.raises(ValueError, match="cannot read image"):
        load_images([tmp_path / "missing.jpg"], size=16)


def test_decoder_samples_one_row_per_leaf_and_depend_on_the_leaf(small_fit):
    trained, _ = small_fit
    samples = samples_per_leaf(trained, per_leaf=4, seed=1)
    assert list(samples) == DIGITS.leaf_names
    assert all(row.shape == (4, 8, 8, 1) and row.dtype == np.uint8 for row in samples.values())
    assert not np.array_equal(samples["0"], samples["1"])
    assert np.array_equal(samples_per_leaf(trained, per_leaf=4, seed=1)["7"], samples["7"])


def test_a_model_without_a_class_conditional_decoder_cannot_sample(small_fit):
    images, y = digits(300)
    trained = fit(pool_with_labels(images, y, 3), DIGITS, replace(FAST, model="supervised", epochs=1))
    with pytest.raises(ValueError, match="no class-conditional decoder"):
        samples_per_leaf(trained)
