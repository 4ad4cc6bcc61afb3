"""The reference classifier: trained once per data set, kept in the lab's shared cache, reused by every run.

It is the judge of E5's samples (:mod:`.scores`), so it must be good at its task: on Fashion-MNIST it must reach
88% test accuracy (issue 12; measured 89.2% with these settings, docs/experiments.md). Training: Adam, learning
rate 2·10⁻³ decaying linearly to 0, batches of 128, ``epochs`` passes over the training set, images in [-1, 1]
as the GAN sees them. It draws its weights and batches from its own seed inside a forked random state, so
whether a run makes it or finds it cached changes nothing else in the run.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from bnlab.lab.experiments.dcgan_modes.nets import Classifier
from bnlab.lab.store import SharedCache
from bnlab.lab.train import batches

__all__ = ["CACHE_NAME", "VERSION", "load_classifier", "train_classifier"]

CACHE_NAME = "dcgan_modes-classifier"
VERSION = 1  # part of the cache key: change it when the network or its training changes
BATCH = 128
LR = 2e-3
SEED = 0


def train_classifier(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, classes: int,
                     epochs: int) -> dict[str, Any]:
    """Train the reference classifier on (x_train, y_train) (on their device); returns what the cache keeps:
    ``{"state": CPU state dict, "test_accuracy", "seconds", "classes"}``."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[x_train.device.index or 0] if x_train.is_cuda else []):
        torch.manual_seed(SEED)
        model = Classifier(classes).to(x_train.device)
        batch = min(BATCH, len(x_train))
        steps = epochs * (len(x_train) // batch)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 - k / steps)
        stream = batches((x_train, y_train), batch, torch.Generator().manual_seed(SEED))
        model.train()
        for _ in range(steps):
            x, y = next(stream)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(x_test.split(1000), y_test.split(1000),
                                                                            strict=True))
    return {"state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "test_accuracy": correct / len(y_test), "seconds": time.perf_counter() - start, "classes": classes}


def load_classifier(shared: SharedCache | None, dataset: str, data: tuple[Tensor, Tensor, Tensor, Tensor, int],
                    epochs: int, device: torch.device) -> tuple[Classifier, dict[str, Any], bool]:
    """(the classifier in eval mode on ``device``, its cache entry, whether this call trained it).

    ``data`` is (x_train, y_train, x_test, y_test, classes); the cache key is the data set, its sizes, the
    epochs and :data:`VERSION`. Without a cache (``shared`` None) it is trained here.
    """
    x_train, y_train, x_test, y_test, classes = data
    inputs = {"dataset": dataset, "version": VERSION, "epochs": epochs, "train": len(x_train), "test": len(x_test),
              "classes": classes}
    made = []

    def make() -> dict[str, Any]:
        made.append(True)
        return train_classifier(x_train, y_train, x_test, y_test, classes, epochs)

    entry = make() if shared is None else shared.get(CACHE_NAME, inputs, make)
    model = Classifier(int(entry["classes"]))
    model.load_state_dict(entry["state"])
    return model.to(device).eval(), entry, bool(made)
