"""A small CNN image classifier whose last layer is global average pooling + one linear head.

That shape is deliberate: with logits = W · GAP(A) + b, the class activation map of class c is
sum_k W[c, k] A_k (Zhou et al. 2016), so CAM and Grad-CAM apply without changing the network; and
GAP(A) (`embed`) is a compact feature space for FID/KID/precision/recall of generated images.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

MIN_SIZE = 8  # with the default strides an 8x8 input still ends as 2x2 maps (8 -> 4 -> 2 -> 2)


def conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Conv 3x3 - BatchNorm - ReLU; the conv has no bias because BatchNorm's shift replaces it."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class CNNClassifier(nn.Module):
    """Images in [-1, 1], (N, C, H, W) with H, W >= 8 -> class logits (N, num_classes).

    Stage i is a Conv-BN-ReLU block of `widths[i]` channels with stride `strides[i]`. The default halves
    the resolution first (cheap: the full-resolution stage is the costly one on a CPU) and keeps it at the
    end, so a 28x28 digit ends as 7x7 maps: fine enough for class activation maps.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64, 128),
                 strides: Sequence[int] = (2, 2, 1)) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or not widths or any(w < 1 for w in widths):
            raise ValueError(f"CNNClassifier: need in_channels >= 1, num_classes >= 2 and positive widths, got "
                             f"in_channels={in_channels}, num_classes={num_classes}, widths={list(widths)}")
        if len(strides) != len(widths) or any(s not in (1, 2) for s in strides):
            raise ValueError(f"CNNClassifier: strides needs one entry of 1 or 2 per width, got "
                             f"widths={list(widths)}, strides={list(strides)}")
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        channels = [self.in_channels, *(int(w) for w in widths)]
        self.features = nn.Sequential(*(
            conv_block(c_in, c_out, int(stride)) for c_in, c_out, stride in zip(channels[:-1], channels[1:], strides)
        ))
        self.num_features: int = channels[-1]
        self.head = nn.Linear(self.num_features, self.num_classes)

    def feature_maps(self, x: Tensor) -> Tensor:
        """The last conv block's activations A, (N, K, h, w): what class activation maps are made of."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"CNNClassifier expects images (N, {self.in_channels}, H, W) with H, W >= {MIN_SIZE}, "
                             f"got {tuple(x.shape)}")
        return self.features(x)

    def embed(self, x: Tensor) -> Tensor:
        """Global average pooling of the feature maps, (N, K): the input of `head`."""
        return self.feature_maps(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))
