"""Classic networks with the layer sizes their papers give, to compare with the lecture's figures.

* ``lenet5``: LeCun, Bottou, Bengio, Haffner (1998), "Gradient-based learning applied to document
  recognition", section II-B: 32x32 input; C1 6@28x28; S2 6@14x14 (trainable subsampling); C3
  16@10x10 wired to S2 by Table I (60 of the 96 map pairs); S4 16@5x5; C5 120; F6 84; 10 Euclidean
  RBF outputs whose 84x10 parameters are fixed. Paper: 340,908 connections, 60,000 trainable
  parameters; ``count_layers`` reproduces both exactly (connections with bias).
* ``alexnet``: Krizhevsky, Sutskever, Hinton (2012): the two GPU columns as ``groups=2`` in conv2,
  conv4 and conv5 (conv3 and the fully connected layers see both columns), 96/256/384/384/256
  filters, response normalization after conv1 and conv2. Its 55x55 first maps need a 227x227 input
  (the paper says 224).
* ``googlenet``: Szegedy et al. (2014), Table 1: torchvision's GoogLeNet with the paper's 5x5
  convolutions in the third inception branch (torchvision keeps 3x3, its issue #906) and plain
  biased convolutions instead of batch norm; dropout 40%; the two auxiliary classifiers
  (torchvision's, biased: they run in training only, and pool adaptively to 4x4 where the paper
  pools 5x5 with stride 3, the same 4x4 at 224x224). Without the paper's two response-normalization
  layers (no parameters).

``PAPERS`` names them for ``summary model=paper:<name>`` with the input each paper uses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# LeNet-5's Table I: the S2 maps (0-5) each C3 map (0-15) reads.
C3_TABLE = (
    (0, 1, 2),
    (1, 2, 3),
    (2, 3, 4),
    (3, 4, 5),
    (0, 4, 5),
    (0, 1, 5),
    (0, 1, 2, 3),
    (1, 2, 3, 4),
    (2, 3, 4, 5),
    (0, 3, 4, 5),
    (0, 1, 4, 5),
    (0, 1, 2, 5),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


class ScaledTanh(nn.Module):
    """LeNet-5's squashing function f(a) = A tanh(S a), A = 1.7159, S = 2/3 (appendix A)."""

    def forward(self, x: Tensor) -> Tensor:
        return 1.7159 * torch.tanh(x * (2 / 3))


class Subsampling(nn.Module):
    """S2/S4: each unit adds a ``size``x``size`` block of one map, multiplies the sum by the map's
    trainable coefficient and adds the map's trainable bias (2 parameters per map)."""

    def __init__(self, channels: int, size: int = 2) -> None:
        super().__init__()
        self.size = size
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        summed = F.avg_pool2d(x, self.size) * self.size**2
        return summed * self.weight[:, None, None] + self.bias[:, None, None]

    def count_connections(self, inp: Tensor, out: Tensor) -> int:
        """Inputs read per output unit, bias excluded."""
        return out.numel() * self.size**2


class PartialConv2d(nn.Module):
    """A convolution whose output map ``o`` reads only the input maps ``table[o]`` (LeNet's C3):
    one ``kernel_size``² kernel per (output, input) pair in the table, one bias per output map."""

    def __init__(self, table: Sequence[Sequence[int]], kernel_size: int) -> None:
        super().__init__()
        pairs = [(out, inp) for out, inputs in enumerate(table) for inp in inputs]
        self.out_channels, self.in_channels = len(table), max(i for _, i in pairs) + 1
        self.register_buffer("pairs", torch.tensor(pairs), persistent=False)
        # the paper's initialisation: uniform in ±2.4 / fan-in of the output unit
        bound = torch.tensor([2.4 / (len(table[out]) * kernel_size**2) for out, _ in pairs])
        self.weight = nn.Parameter((torch.rand(len(pairs), kernel_size, kernel_size) * 2 - 1) * bound[:, None, None])
        self.bias = nn.Parameter(torch.zeros(self.out_channels))

    def forward(self, x: Tensor) -> Tensor:
        k = self.weight.shape[-1]
        full = self.weight.new_zeros(self.out_channels, self.in_channels, k, k)
        full = full.index_put((self.pairs[:, 0], self.pairs[:, 1]), self.weight)
        return F.conv2d(x, full, self.bias)

    def count_connections(self, inp: Tensor, out: Tensor) -> int:
        """Every output position reads each kernel of the table once, bias excluded."""
        return out.numel() // self.out_channels * self.weight.numel()


class EuclideanRBF(nn.Module):
    """LeNet-5's output: y_i = sum_j (x_j - w_ij)^2 with fixed ±1 parameter vectors (the paper
    drew them as 7x12 bitmaps of the characters; these are random ±1 of the same size)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        signs = torch.randint(0, 2, (out_features, in_features)) * 2.0 - 1.0
        self.weight = nn.Parameter(signs, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return ((x[:, None, :] - self.weight) ** 2).sum(-1)

    def count_connections(self, inp: Tensor, out: Tensor) -> int:
        return out.numel() * self.weight.shape[1]


def _lecun_uniform(model: nn.Module) -> nn.Module:
    """The paper's initialisation: uniform in ±2.4 / fan-in (``PartialConv2d`` does its own)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            bound = 2.4 / module.weight[0].numel()
            nn.init.uniform_(module.weight, -bound, bound)
    return model


def lenet5(num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 (1998) for 1x32x32 inputs, layer for layer."""
    return _lecun_uniform(
        nn.Sequential(
            OrderedDict(
                C1=nn.Conv2d(1, 6, 5),
                act1=ScaledTanh(),
                S2=Subsampling(6),
                act2=ScaledTanh(),
                C3=PartialConv2d(C3_TABLE, 5),
                act3=ScaledTanh(),
                S4=Subsampling(16),
                act4=ScaledTanh(),
                C5=nn.Conv2d(16, 120, 5),
                act5=ScaledTanh(),
                flatten=nn.Flatten(),
                F6=nn.Linear(120, 84),
                act6=ScaledTanh(),
                output=EuclideanRBF(84, num_classes),
            )
        )
    )


def _lrn() -> nn.LocalResponseNorm:
    """The paper's k=2, n=5, alpha=1e-4, beta=0.75; torch divides alpha by n, hence 5e-4."""
    return nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)


def alexnet(num_classes: int = 1000) -> nn.Sequential:
    """AlexNet (2012) for 3x227x227 inputs, the two GPU columns as grouped convolutions."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 96, 11, stride=4),
            relu1=nn.ReLU(),
            norm1=_lrn(),
            pool1=nn.MaxPool2d(3, 2),
            conv2=nn.Conv2d(96, 256, 5, padding=2, groups=2),
            relu2=nn.ReLU(),
            norm2=_lrn(),
            pool2=nn.MaxPool2d(3, 2),
            conv3=nn.Conv2d(256, 384, 3, padding=1),
            relu3=nn.ReLU(),
            conv4=nn.Conv2d(384, 384, 3, padding=1, groups=2),
            relu4=nn.ReLU(),
            conv5=nn.Conv2d(384, 256, 3, padding=1, groups=2),
            relu5=nn.ReLU(),
            pool5=nn.MaxPool2d(3, 2),
            flatten=nn.Flatten(),
            drop6=nn.Dropout(),
            fc6=nn.Linear(256 * 6 * 6, 4096),
            relu6=nn.ReLU(),
            drop7=nn.Dropout(),
            fc7=nn.Linear(4096, 4096),
            relu7=nn.ReLU(),
            fc8=nn.Linear(4096, num_classes),
        )
    )


class _ConvReLU(nn.Sequential):
    """The paper's convolution: bias and ReLU, no batch norm."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, **kwargs), nn.ReLU())


def googlenet(num_classes: int = 1000) -> nn.Module:
    """GoogLeNet (2014) for 3x224x224 inputs, with its two auxiliary classifiers."""
    from torchvision.models.googlenet import GoogLeNet, Inception, InceptionAux

    class PaperInception(Inception):  # torchvision's GoogLeNet does not hand its conv_block on
        def __init__(self, *channels: int) -> None:
            super().__init__(*channels, conv_block=_ConvReLU)
            self.branch3[1] = _ConvReLU(channels[4], channels[5], kernel_size=5, padding=2)

    class PaperAux(InceptionAux):
        def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
            super().__init__(in_channels, num_classes, conv_block=_ConvReLU, dropout=dropout)

    return GoogLeNet(
        num_classes, aux_logits=True, init_weights=False, blocks=[_ConvReLU, PaperInception, PaperAux], dropout=0.4
    )


class Paper(NamedTuple):
    """A paper's network and the input shape (C, H, W) its layer sizes assume."""

    build: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    citation: str


PAPERS = {
    "lenet5": Paper(lenet5, (1, 32, 32), "LeCun et al. 1998"),
    "alexnet": Paper(alexnet, (3, 227, 227), "Krizhevsky et al. 2012"),
    "googlenet": Paper(googlenet, (3, 224, 224), "Szegedy et al. 2014"),
}
