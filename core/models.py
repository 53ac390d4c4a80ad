"""The semi-supervised VAEs of Kingma et al. (2014) over the leaves of a taxonomy, and the baselines.

Notation: x an image (or, inside M1+M2, M1's latent mean), z a continuous latent, y one of K leaves.
Every model has ``classify(x) -> leaf logits`` (q(y|x)), ``latent(x)`` (what the embedding view and the
novelty score use) and a ``forward`` that returns its training loss terms, so DistributedDataParallel can
wrap it as is.

The generative story (Kingma et al. 2014, README "The model"): p(y) = Cat(pi), p(z) = N(0, I), x ~ p(x | y, z);
inference q(y|x) and q(z|x, y). With L(x, y) = -ELBO(x, y) (a positive loss), the terms are:
  labelled with admissible set S:  U_S(x) = sum_{y in S} q_S(y|x) L(x, y) - H(q_S),  q_S = q restricted to S
  unlabelled:                      U(x)   = U_S(x) with S = all leaves
  classification:                  alpha * -log sum_{y in S} q(y|x)   on every labelled image
An exact label (|S| = 1) reduces U_S to L(x, y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.nets import ArchSpec, Decoder, Encoder, GaussianHead, SmallClassifier

LIKELIHOODS = ("bernoulli", "gaussian")


class Likelihood(nn.Module):
    """p(x | decoder output): ``log_prob`` summed over each example's dimensions, ``mean`` for recon."""

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BernoulliLikelihood(Likelihood):
    """Pixels in [0, 1] as Bernoulli probabilities (digits-like data); params are logits."""

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        nll = F.binary_cross_entropy_with_logits(params.float(), x.float(), reduction="none")
        return -nll.flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class GaussianLikelihood(Likelihood):
    """Diagonal Gaussian with a learned scale per channel (or per dimension for vectors).

    bounded: the mean is a sigmoid, for pixels in [0, 1]; otherwise the raw output (latent vectors).
    """

    def __init__(self, data_shape: tuple[int, ...], bounded: bool, init_scale: float | None = None) -> None:
        super().__init__()
        self.bounded = bounded
        scale_shape = (data_shape[0], 1, 1) if len(data_shape) == 3 else tuple(data_shape)
        # Pixels in [0, 1] start at scale 0.1; latent vectors (about unit variance) at 1.
        init_scale = init_scale or (0.1 if bounded else 1.0)
        self.log_scale = nn.Parameter(torch.full(scale_shape, math.log(init_scale)))

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean(params.float())
        log_scale = self.log_scale.clamp(min=math.log(1e-3))
        z = (x.float() - mean) / log_scale.exp()
        log_density = -0.5 * z.pow(2) - log_scale - 0.5 * math.log(2 * math.pi)
        return log_density.flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params) if self.bounded else params


def make_likelihood(name: str, data_shape: tuple[int, ...], bounded: bool = True) -> Likelihood:
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(data_shape, bounded=bounded)
    raise ValueError(f"unknown likelihood {name!r}; choose from {LIKELIHOODS}")


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)), analytic, summed over the latent dimensions."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)


def sample_gaussian(mean: torch.Tensor, log_var: torch.Tensor, sample: bool) -> torch.Tensor:
    if not sample:
        return mean
    return mean + torch.randn_like(mean) * (0.5 * log_var).exp()


def set_loss(
    logits: torch.Tensor, leaf_losses: torch.Tensor, admissible: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_S(x), -log q(y in S | x)) per image, for the admissible sets S given as a bool mask (B, K).

    ``leaf_losses`` holds L(x, y) where admissible (its other entries are ignored). Masked entries are
    replaced by zeros before any product so that no inf * 0 reaches the backward pass.
    """
    logits = logits.float()
    restricted = logits.masked_fill(~admissible, float("-inf")).log_softmax(-1)
    log_q_s = restricted.masked_fill(~admissible, 0.0)
    q_s = log_q_s.exp() * admissible
    losses = leaf_losses.float().masked_fill(~admissible, 0.0)
    bound = (q_s * (losses + log_q_s)).sum(-1)
    log_q_in_s = logits.masked_fill(~admissible, float("-inf")).logsumexp(-1) - logits.logsumexp(-1)
    return bound, -log_q_in_s


def classification_loss(logits: torch.Tensor, admissible: torch.Tensor) -> torch.Tensor:
    """-log q(y in S | x) per image."""
    logits = logits.float()
    return logits.logsumexp(-1) - logits.masked_fill(~admissible, float("-inf")).logsumexp(-1)


def consistency_loss(logits: torch.Tensor, view_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of q(y|x) against q(y|view of x) held fixed, per image.

    The view is another image that should share x's class: a re-augmented copy, or one of x's nearest
    neighbours (then the term is a graph regulariser that spreads the labels along the data manifold,
    like label propagation, but through the classifier)."""
    target = view_logits.detach().float().softmax(-1)
    return -(target * logits.float().log_softmax(-1)).sum(-1)


def prior_mismatch(logits: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """KL(mean of q(y|x) over the batch || p(y)): how far the batch's aggregate posterior is from the prior.

    Nothing in the M2 bound stops q(y|x) from giving one class a neighbour's images (on digits with 5 labels
    per class, half the 1s went to 2); matching the aggregate to p(y) does, when p(y) is about right."""
    mean_q = logits.float().softmax(-1).mean(0)
    return (mean_q * (mean_q.clamp_min(1e-8).log() - log_prior)).sum()


@dataclass
class LossTerms:
    """What one training step optimises; every tensor is a scalar (batch means)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


class VAE(nn.Module):
    """M1. Generative: z ~ N(0, I); x ~ p(x | z) = decoder(z). Inference: q(z | x) = N(mu(x), sigma(x))."""

    def __init__(
        self, arch: ArchSpec, input_shape: tuple[int, ...], latent_dim: int, likelihood: str, bounded: bool = True
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.encoder = Encoder(arch, input_shape)
        self.encoder_head = GaussianHead(self.encoder.feature_dim, arch.dense[1], latent_dim)
        self.decoder = Decoder(arch, latent_dim, input_shape)
        self.likelihood = make_likelihood(likelihood, input_shape, bounded)
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder_head(self.encoder(x))

    def neg_elbo(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(-log p(x|z) with z ~ q(z|x), KL(q(z|x) || p(z))) per image."""
        mean, log_var = self.encode(x)
        z = sample_gaussian(mean, log_var, sample)
        return -self.likelihood.log_prob(self.decoder(z), x), gaussian_kl(mean.float(), log_var.float())

    def forward(self, x: torch.Tensor) -> LossTerms:
        recon, kl = self.neg_elbo(x)
        loss = (recon + kl).mean()
        return LossTerms(loss, {"recon": recon.mean().detach(), "kl": kl.mean().detach()})

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        mean, _ = self.encode(x)
        return self.likelihood.mean(self.decoder(mean))


class M2(nn.Module):
    """M2 over K leaves. Generative: y ~ Cat(pi) (uniform), z ~ N(0, I), x ~ p(x | y, z) = decoder(z, y).
    Inference: q(y | x) = encoder_y (the classifier), q(z | x, y) = encoder_z(x, y).

    encoder_z runs its trunk once per image; only its leaf-conditioned dense layers and the decoder run
    once per (image, admissible leaf) pair, as one batch of shape (pairs, ...).
    """

    def __init__(
        self,
        arch: ArchSpec,
        input_shape: tuple[int, ...],
        num_leaves: int,
        latent_dim: int,
        likelihood: str,
        encoder_y: nn.Module,
        alpha: float,
        bounded: bool = True,
        consistency: float = 0.0,
        balance: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_leaves = num_leaves
        self.latent_dim = latent_dim
        self.alpha = alpha
        self.consistency = consistency
        self.balance = balance
        self.encoder_y = encoder_y
        self.encoder_z_trunk = Encoder(arch, input_shape)
        self.encoder_z = GaussianHead(self.encoder_z_trunk.feature_dim, arch.dense[1], latent_dim, num_leaves)
        self.decoder = Decoder(arch, latent_dim, input_shape, num_leaves)
        self.likelihood = make_likelihood(likelihood, input_shape, bounded)
        self.register_buffer("log_prior_y", torch.full((num_leaves,), -math.log(num_leaves)))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder_y(x)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """M2's latents are (y, z): q(y|x) next to the mean of q(z | x, most probable y)."""
        probs = self.classify(x).float().softmax(-1)
        mean, _ = self.encoder_z(self.encoder_z_trunk(x), probs.argmax(-1))
        return torch.cat([probs, mean.float()], dim=1)

    def leaf_losses(self, x: torch.Tensor, admissible: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """L(x, y) = -ELBO(x, y) for every admissible (image, leaf) pair, shape (B, K); 0 elsewhere."""
        features = self.encoder_z_trunk(x)
        image_index, leaf = admissible.nonzero(as_tuple=True)
        mean, log_var = self.encoder_z(features[image_index], leaf)
        z = sample_gaussian(mean, log_var, sample)
        log_px = self.likelihood.log_prob(self.decoder(z, leaf), x[image_index])
        pair_loss = -log_px + gaussian_kl(mean.float(), log_var.float()) - self.log_prior_y[leaf]
        losses = torch.zeros(admissible.shape, dtype=pair_loss.dtype, device=x.device)
        return losses.index_put((image_index, leaf), pair_loss)

    def forward(
        self,
        x_unlabelled: torch.Tensor | None,
        x_labelled: torch.Tensor,
        admissible: torch.Tensor,
        x_view: torch.Tensor | None = None,
    ) -> LossTerms:
        """x_view: for each unlabelled image another one that should share its class (see consistency_loss)."""
        labelled_logits = self.classify(x_labelled)
        labelled_bound, classification = set_loss(labelled_logits, self.leaf_losses(x_labelled, admissible), admissible)
        loss = labelled_bound.mean() + self.alpha * classification.mean()
        terms = {"labelled_bound": labelled_bound.mean().detach(), "classification": classification.mean().detach()}
        if x_unlabelled is not None and len(x_unlabelled):
            everything = torch.ones(len(x_unlabelled), self.num_leaves, dtype=torch.bool, device=x_unlabelled.device)
            unlabelled_logits = self.classify(x_unlabelled)
            unlabelled_bound, _ = set_loss(unlabelled_logits, self.leaf_losses(x_unlabelled, everything), everything)
            loss = loss + unlabelled_bound.mean()
            terms["unlabelled_bound"] = unlabelled_bound.mean().detach()
            if self.balance > 0:
                balance = prior_mismatch(unlabelled_logits, self.log_prior_y)
                loss = loss + self.balance * balance
                terms["balance"] = balance.detach()
            if x_view is not None and self.consistency > 0:
                with torch.no_grad():  # a fixed target: no graph to keep for it
                    view_logits = self.classify(x_view)
                consistency = consistency_loss(unlabelled_logits, view_logits).mean()
                loss = loss + self.consistency * consistency
                terms["consistency"] = consistency.detach()
        return LossTerms(loss, terms)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        leaf = self.classify(x).argmax(-1)
        mean, _ = self.encoder_z(self.encoder_z_trunk(x), leaf)
        return self.likelihood.mean(self.decoder(mean, leaf))

    def sample(self, leaf: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The generative story run forwards for the given leaves: z ~ N(0, I), x = E[p(x | y, z)]."""
        z = torch.randn(len(leaf), self.latent_dim, generator=generator, device=leaf.device)
        return self.likelihood.mean(self.decoder(z, leaf))

    def generative_log_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """log p(y | x) ∝ log p(y) + ELBO(x, y), normalised over leaves (z at its posterior mean)."""
        everything = torch.ones(len(x), self.num_leaves, dtype=torch.bool, device=x.device)
        return (-self.leaf_losses(x, everything, sample=False)).log_softmax(-1)


class M1Classifier(nn.Module):
    """M1 as in the paper: a VAE trained on all images, then a classifier on its latent means."""

    def __init__(self, vae: VAE, num_leaves: int, dropout: float, alpha: float) -> None:
        super().__init__()
        self.vae = vae
        self.alpha = alpha
        self.head = SmallClassifier(ArchSpec((), (256, 128)), (vae.latent_dim,), num_leaves, dropout)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean, _ = self.vae.encode(x)
        return self.head(mean)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x)[0]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.reconstruct(x)

    def forward(
        self,
        x_unlabelled: torch.Tensor | None,
        x_labelled: torch.Tensor,
        admissible: torch.Tensor,
        x_view: torch.Tensor | None = None,
    ) -> LossTerms:
        classification = classification_loss(self.classify(x_labelled), admissible)
        return LossTerms(classification.mean(), {"classification": classification.mean().detach()})


class StackedM1M2(nn.Module):
    """M1+M2: M2 over M1's latent space. M1 is trained first on all images and then frozen; M2 models
    z1 ~ q(z1 | x) (sampled while training, its mean when scoring) with a Gaussian likelihood."""

    def __init__(self, vae: VAE, m2: M2) -> None:
        super().__init__()
        self.vae = vae
        self.m2 = m2

    def _features(self, x: torch.Tensor, sample: bool) -> torch.Tensor:
        with torch.no_grad():
            mean, log_var = self.vae.encode(x)
            return sample_gaussian(mean.float(), log_var.float(), sample)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.m2.classify(self._features(x, sample=False))

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x, sample=False)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.reconstruct(x)

    def generative_log_posterior(self, x: torch.Tensor) -> torch.Tensor:
        return self.m2.generative_log_posterior(self._features(x, sample=False))

    def sample(self, leaf: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """M2 draws M1's latent z1 for the leaf; M1's decoder turns it into an image."""
        return self.vae.likelihood.mean(self.vae.decoder(self.m2.sample(leaf, generator)))

    def forward(
        self,
        x_unlabelled: torch.Tensor | None,
        x_labelled: torch.Tensor,
        admissible: torch.Tensor,
        x_view: torch.Tensor | None = None,
    ) -> LossTerms:
        unlabelled = None if x_unlabelled is None else self._features(x_unlabelled, sample=True)
        view = None if x_view is None else self._features(x_view, sample=True)
        return self.m2(unlabelled, self._features(x_labelled, sample=True), admissible, view)


class Supervised(nn.Module):
    """The baseline: the same classifier q(y|x), trained on the labelled images alone."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.alpha = 1.0

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's penultimate features (it has no generative latent)."""
        if isinstance(self.classifier, SmallClassifier):
            return self.classifier.head[:-1](self.classifier.trunk(x))
        return self.classifier(x).float().softmax(-1)

    def forward(
        self,
        x_unlabelled: torch.Tensor | None,
        x_labelled: torch.Tensor,
        admissible: torch.Tensor,
        x_view: torch.Tensor | None = None,
    ) -> LossTerms:
        classification = classification_loss(self.classify(x_labelled), admissible)
        return LossTerms(classification.mean(), {"classification": classification.mean().detach()})
