"""Small stand-ins for the GTV task's networks, loss and sampler, used only while the real modules
(``engine.models.sanet``, ``engine.models.resformer``, ``engine.losses.cr_loss``,
``engine.data.balance_sampling``) are absent from the checkout; same constructor signatures."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import torch
from torch import nn


class SANet(nn.Module):
    def __init__(self, in_channels=1, num_classes=2, width=64, lateral=128, use_ppm=True, use_sam=True):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
                                  nn.Conv2d(width, num_classes, 1))

    def forward(self, x):
        return self.body(x)


class SliceClassifier(nn.Module):
    def __init__(self, in_channels=1, width=64, num_classes=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU())
        self.last_conv_stage = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.last_conv_stage(self.stem(x)).amax(dim=(2, 3)))


class ResFormer(nn.Module):
    def __init__(self, in_channels=1, num_classes=2, num_slice_classes=2, width=32, swin=True, dfe=True):
        super().__init__()
        self.seg = SANet(in_channels, num_classes, width)
        self.last_conv_stage = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU())
        self.cls = nn.Linear(width, num_slice_classes)

    def forward(self, x):
        return self.seg(x), self.cls(self.last_conv_stage(x).amax(dim=(2, 3)))


class CRLoss(nn.Module):
    def __init__(self, alpha=0.1, regulariser=True):
        super().__init__()

    def forward(self, logits, target):
        ce = nn.functional.cross_entropy(logits, target)
        fg = torch.softmax(logits, 1)[:, 1]
        ref = (target == 1).float()
        return ce + 1 - (2 * (fg * ref).sum() + 1) / (fg.sum() + ref.sum() + 1)


BALANCE_RATIOS = ("abnormal", "1:1", "1:2", "1:4", "natural")


def balanced_indices(abnormal, ratio, n, rng):
    abnormal = np.asarray(abnormal, dtype=bool)
    pos, neg = np.flatnonzero(abnormal), np.flatnonzero(~abnormal)
    if ratio == "natural" or not pos.size:
        pool = np.arange(abnormal.size)
    else:
        k = {"abnormal": 0, "1:1": 1, "1:2": 2, "1:4": 4}[ratio]
        pool = np.concatenate([pos, rng.choice(neg, min(neg.size, k * pos.size), replace=False)]) if k else pos
    return rng.choice(pool, n, replace=n > pool.size)


MODULES = {
    "engine.models.sanet": {"SANet": SANet, "SliceClassifier": SliceClassifier},
    "engine.models.resformer": {"ResFormer": ResFormer},
    "engine.losses.cr_loss": {"CRLoss": CRLoss},
    "engine.data.balance_sampling": {"BALANCE_RATIOS": BALANCE_RATIOS, "balanced_indices": balanced_indices},
}


def install(monkeypatch) -> list[str]:
    """Put a stand-in into ``sys.modules`` for each real module that cannot be imported yet."""
    used = []
    for name, attrs in MODULES.items():
        try:
            importlib.import_module(name)
            continue
        except ImportError:
            pass
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
        used.append(name)
    return used
