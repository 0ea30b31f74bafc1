"""Small user networks for ``backbone.name: custom`` (tests/test_custom_backbone.py): factories
as a user would write them, imported by the pipeline from ``"_custom_model:<function>"`` (the
tests put this folder on ``sys.path``). Nothing here imports dissect except `build_backbone`,
which shows the "full control" form."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def build() -> nn.Module:
    """An ``nn.Sequential`` CNN: its children are the trunk stages."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 6, 3, padding=1),
        relu1=nn.ReLU(),
        block=nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8),
                            nn.ReLU()),
        conv3=nn.Conv2d(8, 10, 3, stride=2, padding=1),
        relu3=nn.ReLU(),
    ))


class TwoPath(nn.Module):
    """Not a Sequential (one trunk stage): a forward with a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 3, padding=1)
        self.act = nn.ReLU()
        self.branch = nn.Sequential(nn.Conv2d(5, 5, 1), nn.ReLU())
        self.out = nn.Conv2d(5, 7, 3, stride=2, padding=1)
        self.out_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = x + self.branch(x)
        return self.out_act(self.out(x))


def build_twopath() -> nn.Module:
    return TwoPath()


def build_shared_relu() -> nn.Module:
    """One ReLU module applied twice: a hook on it would see two calls."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.relu = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.c2(self.relu(self.c1(x))))

    return Shared()


def build_backbone():
    """Full control: a dissect Backbone with its own stages, layers and preprocessing."""
    from dissect.backbones import Backbone
    from dissect.preprocess import Preprocess

    model = build()
    stages = [("first", nn.Sequential(model.conv1, model.relu1)), ("second", model.block),
              ("third", nn.Sequential(model.conv3, model.relu3))]
    layers = {"r1": "relu1", "b": "block.3", "r3": "relu3"}
    return Backbone("mine", model, stages, layers, "ignored",
                    Preprocess((40, 48), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))


def returns_a_number() -> int:
    return 3


def raises() -> nn.Module:
    raise RuntimeError("no weights here")


NOT_CALLABLE = 42
