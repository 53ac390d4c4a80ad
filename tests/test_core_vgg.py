"""VGG16 as q(y|x), started from a local checkpoint (saved here from torchvision; nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from core.nets import vgg16_classifier
from core.taxonomy import Taxonomy
from core.training import TrainConfig, build_model


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    torch.manual_seed(0)
    reference = torchvision.models.vgg16(weights=None)
    path = tmp_path_factory.mktemp("weights") / "vgg16_finetuned.pth"
    torch.save(reference.state_dict(), path)
    return path, reference.state_dict()


def test_vgg16_classifier_loads_a_local_checkpoint_and_replaces_the_last_layer(vgg16_file):
    path, reference = vgg16_file
    classifier = vgg16_classifier(5, path)
    vgg = classifier[1]
    for key in ("features.0.weight", "features.28.bias", "classifier.0.weight", "classifier.3.bias"):
        torch.testing.assert_close(vgg.state_dict()[key], reference[key])
    assert vgg.classifier[6].out_features == 5
    classifier.eval()
    with torch.no_grad():
        assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_vgg16_checkpoint_wrapped_in_a_dict_with_module_prefixes_loads(vgg16_file, tmp_path):
    _, reference = vgg16_file
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.items()}, "epoch": 3}, wrapped)
    vgg = vgg16_classifier(2, wrapped)[1]
    torch.testing.assert_close(vgg.state_dict()["features.0.weight"], reference["features.0.weight"])


def test_a_file_that_is_not_vgg16_is_refused(tmp_path):
    other = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(ValueError, match="not a VGG16 state_dict"):
        vgg16_classifier(3, other)
    with pytest.raises(FileNotFoundError):
        vgg16_classifier(3, tmp_path / "missing.pth")


def test_m2_with_a_vgg16_classifier_trains_a_step(vgg16_file):
    path, _ = vgg16_file
    taxonomy = Taxonomy.from_dict({"ants": [], "bees": []})
    config = TrainConfig(
        model="m2", classifier="vgg16", vgg16_weights=path, arch="conv_small", latent_dim=4, balance=0.0
    )
    model = build_model(config, taxonomy, (3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    terms = model(x, x, torch.tensor([[True, False], [False, True]]))
    terms.loss.backward()
    assert torch.isfinite(terms.loss)
