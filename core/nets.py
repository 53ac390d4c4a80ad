"""Network building blocks, declared as a small table of architectures plus one builder (after
torchvision's vgg.py): a convolutional encoder (4 stride-2 convolutions, then 2 dense layers) for resized
images, its mirror as decoder, an MLP variant for tiny images and for latent vectors, and classifiers
(including one on fixed colour histograms, for photos).

Conditioning on a leaf y: concatenating a one-hot y to the input of a linear layer equals adding a
learned per-leaf row to that layer's output, so ``LeafConditioned`` adds ``embedding[y]``. That lets the
K-leaf enumeration reuse the per-image work and only repeat the small per-(image, leaf) part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from core.registry import CLASSIFIER_KINDS, SMALL_IMAGE_SIDE


@dataclass(frozen=True)
class ArchSpec:
    """conv_channels: widths of the 4 stride-2 convolutions (empty for an MLP); dense: the 2 dense widths."""

    conv_channels: tuple[int, ...]
    dense: tuple[int, int]


ARCHITECTURES: dict[str, ArchSpec] = {
    "conv": ArchSpec(conv_channels=(32, 64, 128, 256), dense=(512, 256)),
    "conv_small": ArchSpec(conv_channels=(16, 32, 64, 128), dense=(256, 128)),
    "mlp": ArchSpec(conv_channels=(), dense=(512, 256)),
    "mlp_small": ArchSpec(conv_channels=(), dense=(256, 128)),
}


def arch_for(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose from {sorted(ARCHITECTURES)}") from None


def default_arch(input_shape: tuple[int, ...]) -> str:
    """Convolutions pay off for images of 32 pixels and more; 8x8 digits get an MLP; feature vectors the
    small MLP (on hymenoptera features: 95.0 / 96.3 / 95.6% at 20 / 50 / 100 labels against 95.4 / 96.1 /
    96.1% with the wide one, within one test image, and 2.5 times faster)."""
    if len(input_shape) == 1:
        return "mlp_small"
    return "conv" if input_shape[1] >= SMALL_IMAGE_SIDE else "mlp"


def _activation() -> nn.Module:
    return nn.LeakyReLU(0.2)


def small_init_(layer: nn.Linear, std: float = 1e-3) -> nn.Linear:
    """Output heads start near zero (Kingma et al.): unit-variance posteriors and even class odds."""
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)
    return layer


class Encoder(nn.Module):
    """x -> features: 4 convolutions (or a flatten for vectors) then the first dense layer."""

    def __init__(self, arch: ArchSpec, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if arch.conv_channels:
            if len(input_shape) != 3:
                raise ValueError(f"a convolutional encoder needs (C, H, W) input, got {input_shape}")
            channels, height, width = input_shape
            if height % 16 or width % 16:
                raise ValueError(f"convolutional nets need sides divisible by 16, got {height}x{width}")
            for out_channels in arch.conv_channels:
                layers += [nn.Conv2d(channels, out_channels, 4, stride=2, padding=1), _activation()]
                channels = out_channels
            flat = channels * (height // 16) * (width // 16)
        else:
            flat = math.prod(input_shape)
        layers += [nn.Flatten(), nn.Linear(flat, arch.dense[0]), _activation()]
        self.layers = nn.Sequential(*layers)
        self.feature_dim = arch.dense[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LeafConditioned(nn.Module):
    """Linear layer on (input ⊕ one-hot leaf), computed as Linear(input) + embedding[leaf]."""

    def __init__(self, in_features: int, out_features: int, num_leaves: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.leaf_rows = nn.Embedding(num_leaves, out_features) if num_leaves else None
        if self.leaf_rows is not None:
            nn.init.normal_(self.leaf_rows.weight, std=1.0 / math.sqrt(max(in_features, 1)))

    def forward(self, x: torch.Tensor, leaf: torch.Tensor | None = None) -> torch.Tensor:
        out = self.linear(x)
        if self.leaf_rows is not None:
            if leaf is None:
                raise ValueError("this layer is conditioned on a leaf; pass one")
            out = out + self.leaf_rows(leaf)
        return out


class GaussianHead(nn.Module):
    """features (and a leaf) -> (mean, log-variance) of a diagonal Gaussian over z; the second dense
    layer of the encoder. No softplus on the log-variance: it would force variances >= 1."""

    def __init__(self, feature_dim: int, hidden: int, latent_dim: int, num_leaves: int = 0) -> None:
        super().__init__()
        self.hidden = LeafConditioned(feature_dim, hidden, num_leaves)
        self.activation = _activation()
        self.mean = small_init_(nn.Linear(hidden, latent_dim))
        self.log_var = small_init_(nn.Linear(hidden, latent_dim))

    def forward(self, features: torch.Tensor, leaf: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.activation(self.hidden(features, leaf))
        # A wide clamp only guards against overflow of exp(); it is inactive in normal training.
        return self.mean(h), self.log_var(h).clamp(-15.0, 10.0)


class Decoder(nn.Module):
    """z (and a leaf) -> likelihood parameters shaped like x: 2 dense layers, then for images the mirror
    of the encoder's convolutions as transposed convolutions."""

    def __init__(self, arch: ArchSpec, latent_dim: int, output_shape: tuple[int, ...], num_leaves: int = 0):
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.first = LeafConditioned(latent_dim, arch.dense[1], num_leaves)
        layers: list[nn.Module] = [_activation()]
        if arch.conv_channels:
            channels, height, width = output_shape
            widths = arch.conv_channels[::-1]
            self.start_shape = (widths[0], height // 16, width // 16)
            layers += [nn.Linear(arch.dense[1], math.prod(self.start_shape)), _activation()]
            layers.append(nn.Unflatten(1, self.start_shape))
            for i, in_channels in enumerate(widths):
                last = i == len(widths) - 1
                out_channels = channels if last else widths[i + 1]
                layers.append(nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1))
                if not last:
                    layers.append(_activation())
        else:
            layers += [nn.Linear(arch.dense[1], arch.dense[0]), _activation()]
            layers += [nn.Linear(arch.dense[0], math.prod(output_shape)), nn.Unflatten(1, output_shape)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, leaf: torch.Tensor | None = None) -> torch.Tensor:
        return self.layers(self.first(z, leaf))


class TinyConvEncoder(nn.Module):
    """x -> features for tiny images (8 to 31 pixels), where 4 stride-2 convolutions do not fit: two
    stages of two 3x3 convolutions and a 2x2 max-pool, then a dense layer."""

    def __init__(self, input_shape: tuple[int, ...], widths: tuple[int, int] = (32, 64), dense: int = 256) -> None:
        super().__init__()
        if len(input_shape) != 3 or min(input_shape[1:]) < 4:
            raise ValueError(f"a tiny-image CNN needs (C, H, W) input of at least 4x4, got {input_shape}")
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out_channels in widths:
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), _activation()]
            layers += [nn.Conv2d(out_channels, out_channels, 3, padding=1), _activation(), nn.MaxPool2d(2)]
            channels, height, width = out_channels, height // 2, width // 2
        layers += [nn.Flatten(), nn.Linear(channels * height * width, dense), _activation()]
        self.layers = nn.Sequential(*layers)
        self.feature_dim = dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> hue, saturation, value, each in [0, 1]."""
    red, green, blue = x.unbind(1)
    value, brightest = x.max(1)
    delta = value - x.min(1).values
    saturation = torch.where(value > 0, delta / value.clamp_min(1e-8), torch.zeros_like(value))
    safe = delta.clamp_min(1e-8)
    hue = torch.stack([((green - blue) / safe) % 6, (blue - red) / safe + 2, (red - green) / safe + 4])
    hue = hue.gather(0, brightest.unsqueeze(0)).squeeze(0) / 6
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], 1)


class ColourHistogram(nn.Module):
    """x -> joint hue/saturation/value histograms of the whole image and of its central half, square-rooted
    (so a linear layer on them compares distributions like the Hellinger distance). No weights: they are
    fixed features, computed on the fly so augmentation and every device work unchanged.

    Why: photo classes are often told apart by colour and background (bees on flowers, ants on soil), and
    a CNN trained from scratch on 100 photos learns those statistics worse than it is given them. On
    hymenoptera with 100 labels it reached 71.7% (random) and 77.6% (active), where the CNN reached 68.4%
    with every pool label (benchmarks/results/label_efficiency/ANALYSIS.md).
    """

    def __init__(self, input_shape: tuple[int, ...], bins: tuple[int, int, int] = (16, 4, 4)) -> None:
        super().__init__()
        if len(input_shape) != 3 or input_shape[0] != 3:
            raise ValueError(f"colour histograms need RGB images (3, H, W), got {input_shape}")
        self.bins = bins
        self.feature_dim = 2 * math.prod(bins)
        # Bins differ in scale by orders of magnitude; standardising them was worth about 2 points (an MLP on
        # 100 hymenoptera labels: 72.0-74.1% against 70.7-72.2% without).
        self.standardise = nn.BatchNorm1d(self.feature_dim, affine=False)

    def _histogram(self, hsv: torch.Tensor) -> torch.Tensor:
        levels = torch.tensor(self.bins, device=hsv.device).view(1, 3, 1, 1)
        index = (hsv * levels).long().clamp_max(levels - 1)  # value 1.0 belongs to the top bin
        flat = (index[:, 0] * self.bins[1] + index[:, 1]) * self.bins[2] + index[:, 2]
        flat = flat.flatten(1)
        counts = torch.zeros(len(flat), math.prod(self.bins), device=hsv.device)
        counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
        return (counts / flat.shape[1]).sqrt()

    def histograms(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, feature_dim): square-rooted bin frequencies, whole then centre."""
        hsv = rgb_to_hsv(x.float().clamp(0, 1))
        height, width = hsv.shape[-2:]
        centre = hsv[..., height // 4 : height - height // 4, width // 4 : width - width // 4]
        return torch.cat([self._histogram(hsv), self._histogram(centre)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardise(self.histograms(x))


class CombinedTrunk(nn.Module):
    """Several trunks side by side: their features concatenated."""

    def __init__(self, *trunks: nn.Module) -> None:
        super().__init__()
        self.trunks = nn.ModuleList(trunks)
        self.feature_dim = sum(trunk.feature_dim for trunk in trunks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([trunk(x) for trunk in self.trunks], 1)


class SmallClassifier(nn.Module):
    """q(y|x) as logits over K leaves: an encoder trunk (the table's, or ``trunk``) with dropout (MC
    dropout gives BALD)."""

    def __init__(
        self,
        arch: ArchSpec,
        input_shape: tuple[int, ...],
        num_leaves: int,
        dropout: float,
        trunk: nn.Module | None = None,
    ):
        super().__init__()
        self.trunk = trunk if trunk is not None else Encoder(arch, input_shape)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(self.trunk.feature_dim, arch.dense[1]),
            _activation(),
            nn.Dropout(dropout),
            small_init_(nn.Linear(arch.dense[1], num_leaves), std=1e-2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class ImageNetNormalise(nn.Module):
    """VGG16 checkpoints expect ImageNet-normalised RGB; the models hand it pixels in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


def vgg16_classifier(num_leaves: int, weights: Path | str | None = None, dropout: float = 0.5) -> nn.Module:
    """torchvision's VGG16 with its last layer replaced by ``num_leaves`` outputs.

    ``weights``: a local file holding a VGG16 state_dict (e.g. a fine-tuned ImageNet model, or a full
    checkpoint dict with a ``state_dict``/``model`` entry). Its last layer is kept only when it already has
    ``num_leaves`` outputs. Nothing is downloaded.
    """
    vgg = torchvision.models.vgg16(weights=None, dropout=dropout)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"VGG16 weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        last = state.get("classifier.6.weight")
        if last is not None and last.shape[0] != num_leaves:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
        vgg.classifier[6] = nn.Linear(4096, num_leaves)
        missing, unexpected = vgg.load_state_dict(state, strict=False)
        allowed_missing = {"classifier.6.weight", "classifier.6.bias"}
        if unexpected or set(missing) - allowed_missing:
            raise ValueError(
                f"{path} is not a VGG16 state_dict: missing {sorted(set(missing) - allowed_missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
    else:
        vgg.classifier[6] = nn.Linear(4096, num_leaves)
    return nn.Sequential(ImageNetNormalise(), vgg)


class LinearClassifier(nn.Module):
    """q(y|x) as one linear layer (with input dropout) on feature vectors: a linear probe. On a pretrained
    backbone's features it is the classifier that few labels can fit; M2 and the consistency term add what
    the unlabelled images know."""

    def __init__(self, input_shape: tuple[int, ...], num_leaves: int, dropout: float) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"a linear classifier takes feature vectors (D,), got {input_shape}")
        self.dropout = nn.Dropout(dropout)
        self.linear = small_init_(nn.Linear(input_shape[0], num_leaves), std=1e-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x))


def classifier_trunk(kind: str, input_shape: tuple[int, ...]) -> nn.Module:
    """The features under a small classifier's head, for every kind but ``vgg16``."""
    if kind == "mlp" or (kind == "cnn" and len(input_shape) != 3):
        return Encoder(arch_for("mlp"), input_shape)  # latent vectors: an MLP is the CNN's honest equivalent
    if kind == "cnn":
        if input_shape[1] < SMALL_IMAGE_SIDE:
            return TinyConvEncoder(input_shape, dense=arch_for("mlp").dense[0])
        return Encoder(arch_for("conv"), input_shape)
    if kind == "colour":
        return ColourHistogram(input_shape)
    if kind == "cnn_colour":
        return CombinedTrunk(classifier_trunk("cnn", input_shape), ColourHistogram(input_shape))
    raise ValueError(f"unknown classifier {kind!r}; choose one of {CLASSIFIER_KINDS}")


def build_classifier(
    kind: str,
    input_shape: tuple[int, ...],
    num_leaves: int,
    *,
    dropout: float = 0.3,
    vgg16_weights: Path | str | None = None,
) -> nn.Module:
    """q(y|x): ``cnn`` / ``mlp`` (the small nets of the table), ``linear`` (feature vectors), ``vgg16``,
    ``colour`` (an MLP on colour histograms) or ``cnn_colour`` (the CNN's features and the histograms side
    by side)."""
    if kind == "linear":
        return LinearClassifier(input_shape, num_leaves, dropout)
    if kind == "vgg16":
        if len(input_shape) != 3 or input_shape[1] < 32:
            raise ValueError(f"vgg16 needs images of at least 32x32, got {input_shape}")
        return vgg16_classifier(num_leaves, vgg16_weights)
    # Every small classifier has the same head; the table's conv and mlp rows share its width.
    return SmallClassifier(arch_for("mlp"), input_shape, num_leaves, dropout, classifier_trunk(kind, input_shape))
