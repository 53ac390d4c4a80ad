"""The model maths: shapes, the K-leaf enumeration, partial labels, main = sum of leaves, calibration."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from core.calibration import MIN_CALIBRATION_LABELS, calibrate, expected_calibration_error, fit_temperature
from core.models import M2, VAE, classification_loss, consistency_loss, prior_mismatch, set_loss
from core.nets import LeafConditioned, TinyConvEncoder, arch_for, build_classifier
from core.taxonomy import Taxonomy
from core.training import TrainConfig, build_model


def make_m2(input_shape: tuple[int, ...], num_leaves: int, arch: str, likelihood: str = "gaussian") -> M2:
    torch.manual_seed(0)
    classifier = build_classifier("mlp" if arch.startswith("mlp") else "cnn", input_shape, num_leaves)
    return M2(arch_for(arch), input_shape, num_leaves, 8, likelihood, classifier, alpha=10.0).eval()


@pytest.mark.parametrize("model_name", ["m1", "m2", "m1m2", "supervised"])
@pytest.mark.parametrize("image_shape", [(1, 8, 8), (3, 32, 32)])
def test_every_model_gives_finite_loss_and_shaped_outputs(model_name, image_shape):
    torch.manual_seed(0)
    taxonomy = Taxonomy.from_dict({"a": ["a1", "a2"], "b": []})
    model = build_model(
        TrainConfig(model=model_name, latent_dim=4, m1_latent_dim=6, balance=0.0), taxonomy, image_shape
    )
    x = torch.rand(5, *image_shape)
    admissible = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    terms = model(x[:3], x, admissible)
    assert torch.isfinite(terms.loss) and terms.loss.ndim == 0
    terms.loss.backward()
    assert model.classify(x).shape == (5, 3)
    assert model.latent(x).ndim == 2 and len(model.latent(x)) == 5
    if hasattr(model, "reconstruct"):
        assert model.reconstruct(x).shape == x.shape
    if model_name in ("m1", "m1m2"):
        vae_terms = model.vae(x)
        assert torch.isfinite(vae_terms.loss)


@pytest.mark.parametrize(("input_shape", "arch"), [((3, 32, 32), "conv_small"), ((1, 8, 8), "mlp_small")])
def test_leaf_enumeration_equals_a_naive_per_leaf_loop(input_shape, arch):
    num_leaves = 4
    model = make_m2(input_shape, num_leaves, arch)
    x = torch.rand(3, *input_shape)
    everything = torch.ones(3, num_leaves, dtype=torch.bool)
    with torch.no_grad():
        batched = model.leaf_losses(x, everything, sample=False)
        naive = torch.empty(3, num_leaves)
        for leaf in range(num_leaves):
            y = torch.full((3,), leaf)
            features = model.encoder_z_trunk(x)  # the trunk again for every leaf: what the batch avoids
            mean, log_var = model.encoder_z(features, y)
            log_px = model.likelihood.log_prob(model.decoder(mean, y), x)
            kl = 0.5 * (mean**2 + log_var.exp() - 1 - log_var).sum(1)
            naive[:, leaf] = -log_px + kl + np.log(num_leaves)
    torch.testing.assert_close(batched, naive, rtol=1e-5, atol=1e-4)


def test_leaf_conditioning_equals_concatenating_a_one_hot():
    torch.manual_seed(0)
    layer = LeafConditioned(5, 7, num_leaves=3)
    x, leaf = torch.randn(4, 5), torch.tensor([0, 2, 1, 2])
    concat = torch.nn.Linear(8, 7)
    with torch.no_grad():
        concat.weight.copy_(torch.cat([layer.linear.weight, layer.leaf_rows.weight.T], dim=1))
        concat.bias.copy_(layer.linear.bias)
        expected = concat(torch.cat([x, torch.nn.functional.one_hot(leaf, 3).float()], dim=1))
        torch.testing.assert_close(layer(x, leaf), expected)


def test_partial_label_of_one_leaf_equals_the_exact_label_loss():
    model = make_m2((1, 8, 8), 5, "mlp_small", likelihood="bernoulli")
    x = torch.rand(4, 1, 8, 8)
    leaf = torch.tensor([0, 3, 4, 1])
    exact = torch.nn.functional.one_hot(leaf, 5).bool()
    with torch.no_grad():
        losses = model.leaf_losses(x, exact, sample=False)
        logits = model.classify(x)
        bound, classification = set_loss(logits, losses, exact)
        # Exact label: U_S = L(x, y) and the classification term is the cross-entropy.
        torch.testing.assert_close(bound, losses[torch.arange(4), leaf])
        torch.testing.assert_close(classification, torch.nn.functional.cross_entropy(logits, leaf, reduction="none"))
        torch.testing.assert_close(classification_loss(logits, exact), classification)


def test_set_bound_matches_its_definition_for_partial_and_unlabelled_sets():
    torch.manual_seed(1)
    logits, losses = torch.randn(3, 4), torch.rand(3, 4) * 50
    admissible = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]], dtype=torch.bool)
    bound, classification = set_loss(logits, losses, admissible)
    for i in range(3):
        s = admissible[i]
        q_s = logits[i][s].softmax(0)
        expected = (q_s * losses[i][s]).sum() + (q_s * q_s.log()).sum()  # sum q L - H(q_S)
        torch.testing.assert_close(bound[i], expected)
        torch.testing.assert_close(classification[i], -logits[i].softmax(0)[s].sum().log())
    # Gradients stay finite although the masked entries are -inf inside.
    logits.requires_grad_(True)
    set_loss(logits, losses, admissible)[0].sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_vae_loss_is_positive_and_finite():
    torch.manual_seed(0)
    vae = VAE(arch_for("conv_small"), (3, 32, 32), 6, "gaussian")
    terms = vae(torch.rand(4, 3, 32, 32))
    assert torch.isfinite(terms.loss) and terms.terms["kl"] >= 0


def test_temperature_recovers_a_known_temperature():
    rng = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=rng) * 2
    targets = torch.multinomial(true_logits.softmax(-1), 1, generator=rng).squeeze(1)
    admissible = torch.nn.functional.one_hot(targets, 5).bool()
    temperature = fit_temperature(true_logits * 3.0, admissible)  # over-confident by a factor 3
    assert temperature == pytest.approx(3.0, rel=0.1)


def _held_out(count: int, *, scale: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` held-out logits over 5 leaves, over-confident by ``scale``, with labels drawn from the truth."""
    rng = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(count, 5, generator=rng) * 2
    targets = torch.multinomial(true_logits.softmax(-1), 1, generator=rng).squeeze(1)
    return true_logits * scale, torch.nn.functional.one_hot(targets, 5).bool()


def test_a_few_held_out_labels_all_predicted_right_never_sharpen_the_model() -> None:
    # Issue 19: 10 validation labels, all right, fitted T -> 0 (clipped to 0.5) and every pool prediction went
    # above 99%. Ten right answers are no evidence of near-certainty.
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0, 0.0]]).repeat(10, 1) + torch.randn(10, 5) * 0.1
    admissible = torch.nn.functional.one_hot(torch.zeros(10, dtype=torch.long), 5).bool()
    calibration = calibrate(logits, admissible)
    assert calibration.temperature == 1.0 and calibration.errors == 0 and not calibration.trusted
    assert "all predicted right" in calibration.reason


def test_too_few_held_out_labels_leave_the_temperature_at_one_either_way() -> None:
    for scale in (0.3, 4.0):  # a fit would ask for T < 1, then T > 1
        logits, admissible = _held_out(12, scale=scale)
        assert fit_temperature(logits, admissible) != pytest.approx(1.0, abs=0.05)
        calibration = calibrate(logits, admissible)
        assert calibration.temperature == 1.0 and calibration.errors > 0 and not calibration.trusted
        assert "fewer than the 30" in calibration.reason


def test_enough_held_out_labels_with_errors_fit_the_temperature_both_ways() -> None:
    for scale in (3.0, 0.5):
        logits, admissible = _held_out(2_000, scale=scale)
        calibration = calibrate(logits, admissible)
        assert calibration.trusted and calibration.fitted and calibration.labels >= MIN_CALIBRATION_LABELS
        assert calibration.temperature == pytest.approx(scale, rel=0.15)


def test_expected_calibration_error():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=20000)
    calibrated_targets = np.array([rng.choice(3, p=p) for p in probs])
    assert expected_calibration_error(probs, calibrated_targets) < 0.02
    sharpened = probs**4 / (probs**4).sum(1, keepdims=True)
    assert expected_calibration_error(sharpened, calibrated_targets) > 0.05


def test_consistency_pulls_q_towards_the_view_and_leaves_the_view_alone():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    view = torch.tensor([[2.0, 0.0, -1.0], [3.0, -3.0, 0.0]], requires_grad=True)
    loss = consistency_loss(logits, view)
    # Cross-entropy against the view's probabilities: at its minimum (equal to the view's entropy) when
    # q(y|x) equals q(y|view), above it otherwise.
    target = view.detach().softmax(-1)
    entropy = -(target * target.log()).sum(-1)
    assert torch.isclose(loss[0], entropy[0]) and loss[1] > entropy[1] + 0.5
    loss.sum().backward()
    assert view.grad is None or (view.grad == 0).all()  # the view is a fixed target
    assert logits.grad[1].abs().sum() > 0


def test_prior_mismatch_is_zero_at_the_prior_and_grows_as_one_class_takes_over():
    log_prior = torch.full((4,), -np.log(4.0))
    balanced = torch.eye(4) * 5.0  # each image confidently a different class: the mean is uniform
    assert prior_mismatch(balanced, log_prior).abs() < 1e-6
    one_class = torch.zeros(4, 4)
    one_class[:, 0] = 5.0
    assert prior_mismatch(one_class, log_prior) > 1.0


@pytest.mark.parametrize("model_name", ["m2", "m1m2"])
def test_consistency_and_balance_terms_join_the_loss_only_when_weighted(model_name):
    taxonomy = Taxonomy.from_dict({"a": ["a1", "a2"], "b": []})
    x, view = torch.rand(6, 1, 8, 8), torch.rand(4, 1, 8, 8)
    admissible = torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.bool)
    config = TrainConfig(model=model_name, latent_dim=4, m1_latent_dim=6, dropout=0.0, consistency=0.0, balance=0.0)
    torch.manual_seed(0)
    plain = build_model(config, taxonomy, (1, 8, 8))
    torch.manual_seed(0)
    weighted = build_model(replace(config, consistency=2.0, balance=3.0), taxonomy, (1, 8, 8))
    weighted.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    base = plain(x[:4], x[4:], admissible, view)
    torch.manual_seed(1)
    extra = weighted(x[:4], x[4:], admissible, view)
    assert "consistency" not in base.terms and "balance" not in base.terms
    expected = base.loss + 2.0 * extra.terms["consistency"] + 3.0 * extra.terms["balance"]
    assert torch.isclose(extra.loss, expected, rtol=1e-5)


def test_tiny_images_get_a_convolutional_classifier():
    for shape in ((1, 8, 8), (3, 16, 16)):
        classifier = build_classifier("cnn", shape, 5)
        assert isinstance(classifier.trunk, TinyConvEncoder)
        assert classifier(torch.rand(2, *shape)).shape == (2, 5)
    assert not isinstance(build_classifier("cnn", (32,), 5).trunk, TinyConvEncoder)  # vectors: an MLP


def test_hsv_conversion_matches_the_standard_library():
    import colorsys

    from core.nets import rgb_to_hsv

    pixels = torch.rand(1, 3, 4, 5)
    pixels[0, :, 0, 0] = torch.tensor([0.5, 0.5, 0.5])  # grey: no hue
    pixels[0, :, 0, 1] = 0.0  # black: no saturation
    hsv = rgb_to_hsv(pixels)[0].permute(1, 2, 0).reshape(-1, 3)
    expected = [colorsys.rgb_to_hsv(*rgb) for rgb in pixels[0].permute(1, 2, 0).reshape(-1, 3).tolist()]
    assert torch.allclose(hsv, torch.tensor(expected), atol=1e-5)


def test_colour_histograms_count_colours_wherever_they_sit():
    from core.nets import ColourHistogram

    features = ColourHistogram((3, 16, 16))
    red = torch.zeros(1, 3, 16, 16)
    red[:, 0] = 1.0
    whole, centre = features.histograms(red).chunk(2, dim=1)
    top_bin = (0 * 4 + 3) * 4 + 3  # hue 0, full saturation, full value
    assert whole[0, top_bin] == 1.0 and centre[0, top_bin] == 1.0 and whole.sum() == 1.0
    photos = torch.rand(3, 3, 16, 16)
    # Square-rooted frequencies: unit length per region; unchanged by flips and by moves inside a region.
    assert torch.allclose(features.histograms(photos).square().sum(1), torch.full((3,), 2.0))
    assert torch.allclose(features.histograms(photos), features.histograms(photos.flip(-1)))
    with pytest.raises(ValueError, match="RGB"):
        ColourHistogram((1, 16, 16))


@pytest.mark.parametrize("kind", ["colour", "cnn_colour"])
def test_colour_classifiers_train_inside_m2(kind):
    torch.manual_seed(0)
    taxonomy = Taxonomy.from_dict({"a": ["a1", "a2"], "b": []})
    model = build_model(TrainConfig(model="m2", classifier=kind, latent_dim=4, balance=0.0), taxonomy, (3, 32, 32))
    x = torch.rand(6, 3, 32, 32)
    admissible = torch.eye(3, dtype=torch.bool)
    terms = model(x, x[:3], admissible)
    terms.loss.backward()
    assert torch.isfinite(terms.loss)
    assert model.classify(x).shape == (6, 3)
    assert all(p.grad is not None for p in model.encoder_y.head.parameters())
