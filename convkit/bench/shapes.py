"""The benchmark shape table: the single source for ``convkit bench`` and ``benchmarks/``.

``CONV_SHAPES``, ``PLANE_SHAPES`` and ``TRAIN_SHAPES`` name every problem the report times, the
ops that make sense for each kind of shape, and the selection rules of ``--shapes`` / ``--ops``.
``WORKLOADS`` are whole networks' convolutions (each distinct conv once, with how often the
network runs it), selected by name with ``--shapes`` and reported as one weighted total
(``convkit.bench.weighted``). ``python -m convkit.bench.shapes`` lists the table with forward
FLOP counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from convkit.kernels.shapes import conv2d_flops, conv_output_size

Pair = Tuple[int, int]


@dataclass(frozen=True)
class ConvShape:
    """One conv2d benchmark shape: input (N, C, H, W), weight (K, C/groups, KH, KW)."""

    name: str
    N: int
    C: int
    H: int
    W: int
    K: int
    KH: int
    KW: int
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    quick: bool = False

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self) -> Tuple[int, int, int, int]:
        return (self.K, self.C // self.groups, self.KH, self.KW)

    @property
    def output_shape(self) -> Tuple[int, int, int, int]:
        OH = conv_output_size(self.H, self.KH, self.stride[0], self.padding[0], self.dilation[0])
        OW = conv_output_size(self.W, self.KW, self.stride[1], self.padding[1], self.dilation[1])
        return (self.N, self.K, OH, OW)

    @property
    def flops(self) -> int:
        """FLOPs of one forward; backward-input and backward-weight each cost the same."""
        return conv2d_flops(self.input_shape, self.weight_shape, self.output_shape)

    def describe(self) -> str:
        s = f"N{self.N} C{self.C} {self.H}x{self.W} K{self.K} {self.KH}x{self.KW}"
        if self.stride != (1, 1):
            s += f" s{_pair_str(self.stride)}"
        if self.padding != (0, 0):
            s += f" p{_pair_str(self.padding)}"
        if self.dilation != (1, 1):
            s += f" d{_pair_str(self.dilation)}"
        if self.groups != 1:
            s += f" g{self.groups}"
        return s


@dataclass(frozen=True)
class PlaneShape:
    """A ReLU / max-pool shape: input (N, C, H, W); pool uses kernel = stride = ``pool``."""

    name: str
    N: int
    C: int
    H: int
    W: int
    pool: int = 2
    quick: bool = False

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    def describe(self) -> str:
        return f"N{self.N} C{self.C} {self.H}x{self.W} (pool {self.pool}x{self.pool} s{self.pool})"


@dataclass(frozen=True)
class TrainShape:
    """A SimpleCNN training step on a batch of N 1x28x28 images, 10 classes."""

    name: str
    N: int
    quick: bool = False

    @property
    def flops(self) -> int:
        """Nominal FLOPs of one step: 3x the forward FLOPs of the convs and linears."""
        fc = 2 * self.N * (3136 * 128 + 128 * 10)
        return 3 * (sum(c.flops for c in simple_cnn_convs(self.N)) + fc)

    def describe(self) -> str:
        return f"SimpleCNN N{self.N} 1x28x28, CE + Adam"


def _pair_str(p: Pair) -> str:
    return str(p[0]) if p[0] == p[1] else f"{p[0]},{p[1]}"


def simple_cnn_convs(N: int) -> Tuple[ConvShape, ConvShape]:
    """SimpleCNN's two convolutions (``convkit.models.SimpleCNN``) at batch N."""
    return (ConvShape("conv1", N, 1, 28, 28, 32, 3, 3, padding=(1, 1)),
            ConvShape("conv2", N, 32, 14, 14, 64, 3, 3, padding=(1, 1)))


CONV_SHAPES: Tuple[ConvShape, ...] = (
    # one image, one channel: what a call costs when there is nothing to compute
    ConvShape("tiny", 1, 1, 8, 8, 1, 3, 3, padding=(1, 1), quick=True),
    ConvShape("simplecnn-conv1", 64, 1, 28, 28, 32, 3, 3, padding=(1, 1), quick=True),
    ConvShape("simplecnn-conv2", 64, 32, 14, 14, 64, 3, 3, padding=(1, 1), quick=True),
    ConvShape("resnet-3x3", 32, 64, 56, 56, 64, 3, 3, padding=(1, 1)),
    ConvShape("resnet-stem", 8, 3, 224, 224, 64, 7, 7, stride=(2, 2), padding=(3, 3)),
    ConvShape("vgg-first", 8, 3, 224, 224, 64, 3, 3, padding=(1, 1)),
    # ResNet's downsampling 3x3 (first conv of a stage)
    ConvShape("strided-3x3-s2", 16, 64, 56, 56, 128, 3, 3, stride=(2, 2), padding=(1, 1)),
    # DeepLab-style atrous conv
    ConvShape("dilated-3x3-d2", 8, 64, 56, 56, 64, 3, 3, padding=(2, 2), dilation=(2, 2)),
    ConvShape("depthwise-3x3", 32, 64, 56, 56, 64, 3, 3, padding=(1, 1), groups=64),
    ConvShape("pointwise-1x1", 32, 64, 56, 56, 128, 1, 1),
)

PLANE_SHAPES: Tuple[PlaneShape, ...] = (
    PlaneShape("simplecnn-act1", 64, 32, 28, 28, quick=True),   # after conv1
    PlaneShape("simplecnn-act2", 64, 64, 14, 14),               # after conv2
)

TRAIN_SHAPES: Tuple[TrainShape, ...] = (
    TrainShape("simplecnn-train", 64, quick=True),
)

@dataclass(frozen=True)
class Workload:
    """The convolutions of one network: each distinct conv once, with its occurrence count."""

    name: str
    description: str
    convs: Tuple[Tuple[ConvShape, int], ...]

    @property
    def shapes(self) -> Tuple[ConvShape, ...]:
        return tuple(s for s, _ in self.convs)

    @property
    def counts(self) -> Dict[str, int]:
        """Shape name -> how many convs of the network have that shape."""
        return {s.name: n for s, n in self.convs}

    @property
    def num_convs(self) -> int:
        return sum(n for _, n in self.convs)

    @property
    def flops(self) -> int:
        """FLOPs (2 per multiply-add) of one forward through every conv of the network."""
        return sum(n * s.flops for s, n in self.convs)


def _resnet_conv(prefix: str, N: int, C: int, HW: int, K: int, k: int, stride: int = 1,
                 stage: int = 0) -> ConvShape:
    """A ResNet conv on an HW x HW input, padding k // 2 (torchvision's), named after its stage,
    kernel, stride and channels: e.g. r18-l2-3x3s2-64-128."""
    name = f"{prefix}-l{stage}-{k}x{k}{'s2' if stride == 2 else ''}-{C}-{K}"
    return ConvShape(name, N, C, HW, HW, K, k, k, stride=(stride, stride),
                     padding=(k // 2, k // 2))


def resnet18_convs(N: int = 8) -> Workload:
    """torchvision's resnet18 on N 3x224x224 images, written out from the architecture (a 7x7
    stride-2 stem, a 3x3 stride-2 max-pool to 56x56, then four stages of two BasicBlocks of two
    3x3 convs; stages 2-4 halve the size in their first conv and add a 1x1 stride-2 downsample):
    20 convs, 11 distinct, 1.82 G multiply-adds per image (torchvision's "1.81 GFLOPS").
    N = 8 is "resnet18-convs" (shapes r18-...); another N is "resnet18-convs-n<N>" (shapes
    r18n<N>-...), e.g. N = 2 for small-batch inference and fine-tuning."""
    p = "r18" if N == 8 else f"r18n{N}"
    convs = [(ConvShape(f"{p}-stem", N, 3, 224, 224, 64, 7, 7, stride=(2, 2),
                        padding=(3, 3)), 1),
             (_resnet_conv(p, N, 64, 56, 64, 3, stage=1), 4)]
    C, HW = 64, 56
    for stage, K in ((2, 128), (3, 256), (4, 512)):
        convs += [(_resnet_conv(p, N, C, HW, K, 3, 2, stage), 1),      # block 1, conv1
                  (_resnet_conv(p, N, C, HW, K, 1, 2, stage), 1),      # downsample
                  (_resnet_conv(p, N, K, HW // 2, K, 3, 1, stage), 3)]  # the other three
        C, HW = K, HW // 2
    return Workload("resnet18-convs" if N == 8 else f"resnet18-convs-n{N}",
                    f"every conv of ResNet-18, N{N} 3x224x224", tuple(convs))


def resnet50_convs(N: int = 8) -> Workload:
    """torchvision's resnet50 (v1.5: the stride on the 3x3) on N 3x224x224 images: stem and
    max-pool as resnet18, then stages of 3, 4, 6, 3 Bottlenecks (1x1 reduce to width, 3x3,
    1x1 expand to 4x width; the first block of each stage has a 1x1 downsample, stride 2 from
    stage 2): 53 convs, 23 distinct, 4.09 G multiply-adds per image."""
    convs = [(ConvShape("r50-stem", N, 3, 224, 224, 64, 7, 7, stride=(2, 2),
                        padding=(3, 3)), 1)]
    C, HW = 64, 56
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        s = 1 if stage == 1 else 2
        out, HWo = 4 * width, HW // s
        # block 1: reduce at the input size, the strided 3x3, expand, and the downsample
        first = [_resnet_conv("r50", N, C, HW, width, 1, 1, stage),
                 _resnet_conv("r50", N, width, HW, width, 3, s, stage),
                 _resnet_conv("r50", N, width, HWo, out, 1, 1, stage),
                 _resnet_conv("r50", N, C, HW, out, 1, s, stage)]
        # blocks 2..: reduce from 4x width, 3x3, expand
        rest = [_resnet_conv("r50", N, out, HWo, width, 1, 1, stage),
                _resnet_conv("r50", N, width, HWo, width, 3, 1, stage),
                _resnet_conv("r50", N, width, HWo, out, 1, 1, stage)]
        counts: Dict[ConvShape, int] = {}
        for shape in first + (blocks - 1) * rest:
            counts[shape] = counts.get(shape, 0) + 1   # stage 1's downsample = its expand
        convs += counts.items()
        C, HW = out, HWo
    return Workload("resnet50-convs", f"every conv of ResNet-50, N{N} 3x224x224", tuple(convs))


WORKLOADS: Dict[str, Workload] = {w.name: w for w in (resnet18_convs(8), resnet50_convs(8),
                                                        resnet18_convs(2))}

CONV_OPS = ("conv_fwd", "conv_bwd_input", "conv_bwd_weight", "conv_fwd_bwd")
RELU_OPS = ("relu_fwd", "relu_bwd")
POOL_OPS = ("pool_fwd", "pool_bwd")
TRAIN_OPS = ("train_step",)
OPS = CONV_OPS + RELU_OPS + POOL_OPS + TRAIN_OPS
OP_GROUPS = {"conv": CONV_OPS, "relu": RELU_OPS, "pool": POOL_OPS, "train": TRAIN_OPS,
             "all": OPS}
ALGORITHMS = ("direct", "im2col", "winograd", "auto")


def all_shapes() -> list:
    """Every shape of the table, conv first, in report order."""
    return [*CONV_SHAPES, *PLANE_SHAPES, *TRAIN_SHAPES]


def ops_for(shape) -> Tuple[str, ...]:
    """The ops that make sense for a shape."""
    if isinstance(shape, ConvShape):
        return CONV_OPS
    if isinstance(shape, PlaneShape):
        return RELU_OPS + POOL_OPS
    return TRAIN_OPS


def select_shapes(names: Optional[Sequence[str]], quick: bool) -> list:
    """Shapes by name, 'quick' / 'all' (the table), or a workload name (its distinct convs; one
    of them also by its own name); default: the quick subset or everything in the table."""
    shapes = all_shapes()
    if not names:
        return [s for s in shapes if s.quick] if quick else shapes
    by_name = {s.name: s for s in shapes}
    in_workloads = {s.name: s for w in WORKLOADS.values() for s in w.shapes}
    picked = []
    for name in names:
        if name in ("quick", "all"):
            picked += [s for s in shapes if s.quick or name == "all"]
        elif name in WORKLOADS:
            picked += WORKLOADS[name].shapes
        elif name in by_name or name in in_workloads:
            picked.append(by_name.get(name) or in_workloads[name])
        else:
            raise SystemExit(f"convkit bench: unknown shape {name!r}; choose from "
                             f"{', '.join(by_name)}, quick, all, or a workload "
                             f"{', '.join(WORKLOADS)} (python -m convkit.bench.shapes lists "
                             "their rows)")
    return list(dict.fromkeys(picked))


def select_ops(names: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """Ops by name or group (conv, relu, pool, train, all)."""
    if not names:
        return OPS
    picked: List[str] = []
    for name in names:
        if name in OP_GROUPS:
            picked += OP_GROUPS[name]
        elif name in OPS:
            picked.append(name)
        else:
            raise SystemExit(f"convkit bench: unknown op {name!r}; choose from "
                             f"{', '.join(OPS)} or a group {', '.join(OP_GROUPS)}")
    return tuple(op for op in OPS if op in picked)


def table() -> str:
    """Every shape, one line each: name, description, forward GFLOP (convs), quick flag."""
    lines = []
    for s in all_shapes():
        gflop = f"{s.flops / 1e9:8.3f} GFLOP fwd" if isinstance(s, ConvShape) else " " * 17
        lines.append(f"{s.name:<18} {s.describe():<40} {gflop}  {'quick' if s.quick else ''}"
                     .rstrip())
    return "\n".join(lines)


def workloads_table() -> str:
    """Every workload: a title line (convs, distinct, forward GFLOP per image), then its rows
    with their counts."""
    lines = []
    for w in WORKLOADS.values():
        N = w.shapes[0].N
        lines.append(f"{w.name}: {w.description}; {w.num_convs} convs, {len(w.convs)} distinct, "
                     f"{w.flops / N / 1e9:.2f} GFLOP fwd per image ({w.flops / N / 2e9:.2f} G "
                     "multiply-adds)")
        lines += [f"  {s.name:<22} x{n:<2} {s.describe():<40} {s.flops / 1e9:8.3f} GFLOP fwd"
                  for s, n in w.convs]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
    print()
    print(workloads_table())
