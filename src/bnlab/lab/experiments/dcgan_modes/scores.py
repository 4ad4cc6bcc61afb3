"""How E5 scores a set of images with the reference classifier: confidence, class histogram, an Inception-Score
analogue and a Fréchet distance on the classifier's features. Computed in float64.

For N images with class probabilities p(y|x) (N, C) and features f (N, F):

- confidence: the mean over images of max_y p(y|x);
- histogram: how many images the classifier puts in each class (argmax);
- Inception-Score analogue (Salimans et al. 2016, with the reference classifier in Inception's place):
  exp(E_x KL(p(y|x) ‖ p(y))), p(y) = E_x p(y|x); from 1 (every image the same or unsure) to C (each image sure
  of its class, and the classes used equally);
- Fréchet distance (Heusel et al. 2017, on these features): ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½),
  with unbiased covariances; 0 for identical distributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bnlab.lab.experiments.dcgan_modes.nets import Classifier

__all__ = ["Scores", "class_histogram", "classify", "confidence", "frechet_distance", "inception_score", "score"]


def confidence(probs: Tensor) -> float:
    """Mean over images of the largest class probability; ``probs`` is (N, C)."""
    return float(probs.double().max(dim=1).values.mean())


def class_histogram(probs: Tensor) -> list[int]:
    """Images per class (argmax of ``probs`` (N, C)), C counts."""
    return [int(c) for c in torch.bincount(probs.argmax(dim=1).cpu(), minlength=probs.shape[1])]


def inception_score(probs: Tensor) -> float:
    """exp(E_x KL(p(y|x) ‖ p(y))) of ``probs`` (N, C), each row a distribution; 0·log 0 counts as 0."""
    p = probs.double()
    marginal = p.mean(dim=0, keepdim=True)
    kl = (torch.xlogy(p, p) - torch.xlogy(p, marginal)).sum(dim=1)
    return math.exp(float(kl.mean()))


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to the rows of ``a`` (N, F) and ``b`` (M, F), N, M ≥ 2.

    Tr((Σ₁ Σ₂)^½) is taken as Tr((Σ₁^½ Σ₂ Σ₁^½)^½), the same number from a symmetric matrix, so eigh serves.
    """
    if a.shape[0] < 2 or b.shape[0] < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"the Fréchet distance needs two sets of at least 2 rows of the same width, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(dim=0), b.mean(dim=0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross)


@torch.no_grad()
def classify(classifier: Classifier, images: Tensor, batch: int = 500) -> tuple[Tensor, Tensor]:
    """(class probabilities (N, C), features (N, F)) of ``images`` (N, 1, 28, 28) in [-1, 1], float64 on the CPU."""
    probs, features = [], []
    for chunk in images.split(batch):
        f = classifier.features(chunk)
        probs.append(torch.softmax(classifier.head(f).double(), dim=1).cpu())
        features.append(f.double().cpu())
    return torch.cat(probs), torch.cat(features)


@dataclass(frozen=True)
class Scores:
    """One set of images, scored (see the module docstring); ``frechet`` is against the reference features."""

    confidence: float
    inception_score: float
    frechet: float | None
    histogram: list[int]
    samples: int

    def record(self) -> dict[str, float | int | list[int] | None]:
        return {"confidence": round(self.confidence, 6), "inception_score": round(self.inception_score, 6),
                "frechet": None if self.frechet is None or not math.isfinite(self.frechet) else
                round(self.frechet, 6), "histogram": self.histogram, "samples": self.samples}


def score(classifier: Classifier, images: Tensor, reference_features: Tensor) -> Scores:
    """Score ``images`` (N, 1, 28, 28) in [-1, 1] against the features of real images ``reference_features``."""
    probs, features = classify(classifier, images)
    return Scores(confidence(probs), inception_score(probs), frechet_distance(features, reference_features),
                  class_histogram(probs), int(images.shape[0]))
