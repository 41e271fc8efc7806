"""
HRNet (Sun et al., CVPR 2019) and Lite-HRNet (Yu et al., CVPR 2021) for top-down pose estimation, in Paddle.

Both networks keep a high-resolution branch alive from the stem to the output and repeatedly exchange
information between branches of decreasing resolution (the "fuse" layers). HRNet's branches are stacks of
residual blocks; Lite-HRNet replaces them with cheap "conditional channel weighting" blocks.

The layer tree mirrors the official checkpoints (HRNet: leoxiaobin/deep-high-resolution-net.pytorch,
Lite-HRNet: HRNet/Lite-HRNet on mmpose), so their weights load by renaming BatchNorm buffers only, and
PaddleDetection checkpoints load through the key rules at the bottom of this file.

    python model.py --model hrnet_w32 --input-size 256x192       # summary, params and MACs
    python model.py --model hrnet_w32 --convert IN.pth OUT.pdparams
"""
import os


import argparse
import collections
import pickle
import re
import warnings

import numpy as np

warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time note about building C++ extensions
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from data import (COCO_KEYPOINT_NAMES, COCO_PERSON_CATEGORY, atomic_output, canonical_joint_names,
                  keypoint_info_from_category, parse_input_size, resolve_path_or_url, run_script)

MODEL_NAMES = ("hrnet_w32", "hrnet_w48", "lite_hrnet_18", "lite_hrnet_30")


def batch_norm(channels):
    # Paddle's momentum is the weight of the old running value: 0.9 here == PyTorch's momentum=0.1
    return nn.BatchNorm2D(channels, momentum=0.9, epsilon=1e-5)


def conv3x3(cin, cout, stride=1):
    return nn.Conv2D(cin, cout, 3, stride=stride, padding=1, bias_attr=False)


def conv1x1(cin, cout):
    return nn.Conv2D(cin, cout, 1, bias_attr=False)


class DepthwiseConv2D(nn.Conv2D):
    """3x3 depthwise conv (one filter per channel, no bias), Lite-HRNet's cheap spatial mixing.

    Paddle's CPU kernel runs an im2col and a one-row GEMM per sample and channel: the largest share of a
    Lite-HRNet training step. Where a map is small (branches 2-4 at 128x96) one unfold and one batched
    matmul compute the same sums faster (README, Speed); on larger maps, on GPUs and in exported programs
    the depthwise op stays. DepthwiseConv2D.matmul_positions = 0 keeps it everywhere.
    """
    matmul_positions = 256

    def __init__(self, channels, stride=1):
        super().__init__(channels, channels, 3, stride=stride, padding=1, groups=channels, bias_attr=False)

    def forward(self, x):
        return depthwise_conv3x3(x, self.weight, self._stride)


def depthwise_conv3x3(x, weight, stride):
    """DepthwiseConv2D's sums (weight: channels x 1 x 3 x 3, padding 1), also for its quantization-aware twin."""
    n, c, h, w = x.shape
    out_h, out_w = (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1
    if not (paddle.in_dynamic_mode() and x.place.is_cpu_place()
            and out_h * out_w <= DepthwiseConv2D.matmul_positions):
        return F.conv2d(x, weight, stride=stride, padding=1, groups=c)
    columns = F.unfold(x, 3, strides=stride, paddings=1).reshape([n, c, 9, out_h * out_w])
    return paddle.matmul(weight.reshape([1, c, 1, 9]), columns).reshape([n, c, out_h, out_w])


# ----------------------------------------------------------------------------------------------------
# Resampling written with plain tensor ops. F.interpolate is exact too, but in the default (PIR) export
# format every interpolate op fails under oneDNN in Paddle 3.3.1, so these run everywhere.

def upsample_nearest(x, factor):
    if factor == 1:  # no op at all, rather than three that copy (the lowest branch in cross-resolution weighting)
        return x
    _, c, h, w = x.shape
    x = x.reshape([-1, c, h, 1, w, 1]).expand([-1, c, h, factor, w, factor])
    return x.reshape([-1, c, h * factor, w * factor])


def sum_of_lower_branches(row, xs, i):
    """Sum over j > i of row[j](xs[j]) nearest-upsampled by 2^(j-i) to branch i, or None if i is the last branch.

    Evaluated from the lowest resolution up, one x2 step at a time (nearest upsampling commutes with sums):
    only one tensor per row is upsampled to full size, and every conv output takes the running sum as its
    residual input, which oneDNN fuses into the conv.
    """
    y = None
    for j in range(len(xs) - 1, i, -1):
        z = row[j](xs[j])
        y = z if y is None else z + upsample_nearest(y, 2)
    return None if y is None else upsample_nearest(y, 2)


_BILINEAR_MATRICES = {}


@paddle.jit.not_to_static  # plain numpy at trace time: the matrix becomes a constant of the exported graph
def _align_corners_matrix(n_in, n_out):
    """(n_out, n_in) matrix M with M @ v == 1-D linear interpolation of v, align_corners=True."""
    key = (n_in, n_out)
    if key not in _BILINEAR_MATRICES:
        m = np.zeros((n_out, n_in))
        src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = src - lo
        np.add.at(m, (np.arange(n_out), lo), 1 - frac)
        np.add.at(m, (np.arange(n_out), hi), frac)
        _BILINEAR_MATRICES[key] = m
    return _BILINEAR_MATRICES[key]


def resize_bilinear_align_corners(x, height, width):
    """Bilinear resize (align_corners=True) as two small matmuls: rows then columns, separable and exact."""
    _, c, h, w = x.shape
    rows = paddle.to_tensor(_align_corners_matrix(h, height), dtype=x.dtype)
    cols = paddle.to_tensor(_align_corners_matrix(w, width).T, dtype=x.dtype)
    # on (N*C, h, w): a 4-D matmul reading a oneDNN conv output gives wrong values in Paddle 3.3.1 inference
    x = paddle.matmul(paddle.matmul(rows, x.reshape([-1, h, w])), cols)
    return x.reshape([-1, c, height, width])


# ----------------------------------------------------------------------------------------------------
# HRNet-W32 / W48

class BasicBlock(nn.Layer):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, planes, stride), batch_norm(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), batch_norm(planes)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + residual)


class Bottleneck(nn.Layer):
    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv1x1(cin, planes), batch_norm(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), batch_norm(planes)
        self.conv3, self.bn3 = conv1x1(planes, planes * 4), batch_norm(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + residual)


def fuse_layers(channels, num_outputs, strided_step):
    """fuse_layers[i][j] brings branch j to branch i's width and resolution (paper Fig. 3).

    j > i: 1x1 conv + BN; the nearest upsampling by 2^(j-i) that follows is in sum_of_lower_branches.
    j < i: (i-j) stride-2 steps, strided_step(cin, cout, last); the intermediate ones keep branch j's width.
    """
    rows = nn.LayerList()
    for i in range(num_outputs):
        row = nn.LayerList()
        for j in range(len(channels)):
            if j > i:
                row.append(nn.Sequential(conv1x1(channels[j], channels[i]), batch_norm(channels[i])))
            elif j == i:
                row.append(nn.Identity())
            else:
                row.append(nn.Sequential(*[strided_step(channels[j], channels[i] if k == i - j - 1 else channels[j],
                                                        k == i - j - 1) for k in range(i - j)]))
        rows.append(row)
    return rows


def hrnet_strided_step(cin, cout, last):
    """3x3 conv + BN, with ReLU except on the last step of a chain."""
    step = [conv3x3(cin, cout, stride=2), batch_norm(cout)]
    return nn.Sequential(*step) if last else nn.Sequential(*step, nn.ReLU())


class HighResolutionModule(nn.Layer):
    """Parallel branches of 4 BasicBlocks each, then every output is the ReLU'd sum over all branches."""

    def __init__(self, channels, multi_scale_output=True):
        super().__init__()
        self.branches = nn.LayerList([
            nn.Sequential(*[BasicBlock(c, c) for _ in range(4)]) for c in channels])
        self.fuse_layers = fuse_layers(channels, len(channels) if multi_scale_output else 1, hrnet_strided_step)

    def forward(self, xs):
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        outs = []
        for i, row in enumerate(self.fuse_layers):
            y, lower = xs[i], sum_of_lower_branches(row, xs, i)
            if lower is not None:
                y = y + lower
            for j in range(i):  # higher resolutions, brought down by strided convs; the add fuses into the last conv
                y = row[j](xs[j]) + y
            outs.append(F.relu(y))
        return outs


class Transition(nn.LayerList):
    """Between stages: layer i maps branch i (or, for the new branch, the lowest-resolution one)."""

    def forward(self, xs):
        return [layer(xs[min(i, len(xs) - 1)]) for i, layer in enumerate(self)]


def hrnet_transition(channels_prev, channels):
    """Adapts the existing branches' widths and opens one new branch at half resolution."""
    layers = Transition()
    for i, c in enumerate(channels):
        if i < len(channels_prev):
            layers.append(nn.Identity() if c == channels_prev[i] else
                          nn.Sequential(conv3x3(channels_prev[i], c), batch_norm(c), nn.ReLU()))
        else:  # the new branch is a strided conv of the lowest-resolution existing branch
            layers.append(nn.Sequential(nn.Sequential(
                conv3x3(channels_prev[-1], c, stride=2), batch_norm(c), nn.ReLU())))
    return layers


class HRNet(nn.Layer):
    """Stem (stride 4) -> stage 1 (Bottlenecks) -> stages 2-4 (1/4/3 modules, 2/3/4 branches) -> 1x1 head."""

    def __init__(self, width=32, num_joints=17):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(3, 64, stride=2), batch_norm(64)
        self.conv2, self.bn2 = conv3x3(64, 64, stride=2), batch_norm(64)
        downsample = nn.Sequential(conv1x1(64, 256), batch_norm(256))
        self.layer1 = nn.Sequential(Bottleneck(64, 64, downsample=downsample),
                                    *[Bottleneck(256, 64) for _ in range(3)])
        c = [width, width * 2, width * 4, width * 8]
        self.transition1 = hrnet_transition([256], c[:2])
        self.stage2 = nn.Sequential(HighResolutionModule(c[:2]))
        self.transition2 = hrnet_transition(c[:2], c[:3])
        self.stage3 = nn.Sequential(*[HighResolutionModule(c[:3]) for _ in range(4)])
        self.transition3 = hrnet_transition(c[:3], c)
        # the very last module only fuses into the highest-resolution branch: the head reads nothing else
        self.stage4 = nn.Sequential(HighResolutionModule(c), HighResolutionModule(c),
                                    HighResolutionModule(c, multi_scale_output=False))
        self.final_layer = nn.Conv2D(width, num_joints, 1)
        init_weights(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        xs = self.stage2(self.transition1([self.layer1(x)]))
        xs = self.stage3(self.transition2(xs))
        xs = self.stage4(self.transition3(xs))
        return self.final_layer(xs[0])


# ----------------------------------------------------------------------------------------------------
# Lite-HRNet-18 / 30. "ConvModule" below is mmcv's conv -> BN -> activation, with names conv / bn.

class ConvModule(nn.Layer):
    def __init__(self, cin, cout, kernel=1, stride=1, depthwise=False, act="relu", norm=True):
        super().__init__()
        # mmcv gives the conv a bias only when no norm follows it
        self.conv = DepthwiseConv2D(cin, stride) if depthwise else nn.Conv2D(
            cin, cout, kernel, stride=stride, padding=kernel // 2, bias_attr=None if not norm else False)
        self.bn = batch_norm(cout) if norm else None
        self.act = act

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act == "relu":
            return F.relu(x)
        if self.act == "sigmoid":
            return F.sigmoid(x)
        return x


def dw_pw(cin, cout, stride, relu):
    """Depthwise 3x3 + BN, pointwise 1x1 + BN (+ ReLU): Lite-HRNet's plain Sequential building block."""
    layers = [DepthwiseConv2D(cin, stride), batch_norm(cin), conv1x1(cin, cout), batch_norm(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class Stem(nn.Layer):
    """3x3 s2 conv, then a ShuffleNet-v2-style downsampling unit: stride 4, 32 channels."""

    def __init__(self, channels=32):
        super().__init__()
        half = channels // 2
        self.conv1 = ConvModule(3, channels, 3, stride=2)
        self.branch1 = nn.Sequential(ConvModule(half, half, 3, stride=2, depthwise=True, act=None),
                                     ConvModule(half, half, 1))
        self.expand_conv = ConvModule(half, channels, 1)
        self.depthwise_conv = ConvModule(channels, channels, 3, stride=2, depthwise=True, act=None)
        self.linear_conv = ConvModule(channels, half, 1)

    def forward(self, x):
        x1, x2 = paddle.chunk(self.conv1(x), 2, axis=1)
        x2 = self.linear_conv(self.depthwise_conv(self.expand_conv(x2)))
        return F.channel_shuffle(paddle.concat([self.branch1(x1), x2], axis=1), 2)


class CrossResolutionWeighting(nn.Layer):
    """Channel weights computed from all branches pooled to the lowest resolution (paper Sec. 3.3, H)."""

    def __init__(self, channels, ratio=8):
        super().__init__()
        self.channels = channels
        total = sum(channels)
        self.conv1 = ConvModule(total, int(total / ratio), 1)
        self.conv2 = ConvModule(int(total / ratio), total, 1, act="sigmoid")

    def forward(self, xs):
        h, w = xs[-1].shape[2:]
        pooled = [F.adaptive_avg_pool2d(x, (h, w)) for x in xs[:-1]] + [xs[-1]]
        weights = paddle.split(self.conv2(self.conv1(paddle.concat(pooled, axis=1))), self.channels, axis=1)
        return [x * upsample_nearest(a, x.shape[2] // h) for x, a in zip(xs, weights)]


class SpatialWeighting(nn.Layer):
    """Squeeze-and-excitation on one branch (paper Sec. 3.3, F): no BN, biased convs."""

    def __init__(self, channels, ratio=4):
        super().__init__()
        self.conv1 = ConvModule(channels, int(channels / ratio), 1, norm=False)
        self.conv2 = ConvModule(int(channels / ratio), channels, 1, act="sigmoid", norm=False)

    def forward(self, x):
        # global average pooling, as the official AdaptiveAvgPool2d(1). A mean over axes 2 and 3 gives the same
        # numbers, but its backward is ~15x slower on CPU and oneDNN inference runs it with a reference kernel
        return x * self.conv2(self.conv1(F.adaptive_avg_pool2d(x, 1)))


class ConditionalChannelWeighting(nn.Layer):
    """Half of every branch passes through; the other half is re-weighted across resolutions,
    depthwise-convolved and re-weighted spatially, then the halves are concatenated and shuffled."""

    def __init__(self, channels, reduce_ratio=8):
        super().__init__()
        half = [c // 2 for c in channels]
        self.cross_resolution_weighting = CrossResolutionWeighting(half, reduce_ratio)
        self.depthwise_convs = nn.LayerList([ConvModule(c, c, 3, depthwise=True, act=None) for c in half])
        self.spatial_weighting = nn.LayerList([SpatialWeighting(c) for c in half])

    def forward(self, xs):
        halves = [paddle.chunk(x, 2, axis=1) for x in xs]
        x2 = self.cross_resolution_weighting([h[1] for h in halves])
        x2 = [sw(dw(x)) for x, dw, sw in zip(x2, self.depthwise_convs, self.spatial_weighting)]
        return [F.channel_shuffle(paddle.concat([h[0], x], axis=1), 2) for h, x in zip(halves, x2)]


def lite_strided_step(cin, cout, last):
    """Lite-HRNet's fuse layers make every strided 3x3 conv depthwise + pointwise."""
    return dw_pw(cin, cout, 2, relu=not last)


class LiteHRModule(nn.Layer):
    def __init__(self, channels, num_blocks=2, reduce_ratio=8):
        super().__init__()
        self.layers = nn.Sequential(*[ConditionalChannelWeighting(channels, reduce_ratio)
                                      for _ in range(num_blocks)])
        self.fuse_layers = fuse_layers(channels, len(channels), lite_strided_step)

    def forward(self, xs):
        xs = self.layers(xs)
        # Official quirk kept for weight compatibility: its loop starts at j=0 with in-place `y += ...`,
        # so the branch-0 term is counted twice and row 0's running pre-ReLU sum overwrites xs[0],
        # which later rows then read. (PaddleDetection reproduces it the same way.)
        x0, outs = xs[0], []
        for i, row in enumerate(self.fuse_layers):
            first = x0 if i == 0 else row[0](x0)
            y, lower = first + first, sum_of_lower_branches(row, xs, i)
            if lower is not None:
                y = y + lower
            if i > 0:
                y = y + xs[i]
            for j in range(1, i):
                y = row[j](xs[j]) + y
            if i == 0:
                x0 = y
            outs.append(F.relu(y))
        return outs


class DepthwiseSeparableConv(nn.Layer):
    def __init__(self, cin, cout):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, 3, depthwise=True, act=None)
        self.pointwise_conv = ConvModule(cin, cout, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class IterativeHead(nn.Layer):
    """From the lowest resolution up: add the upsampled previous output, then a depthwise-separable conv."""

    def __init__(self, channels):
        super().__init__()
        rev = channels[::-1]
        self.projects = nn.LayerList()
        for i, c in enumerate(rev):
            cout = rev[i + 1] if i + 1 < len(rev) else c
            self.projects.append(DepthwiseSeparableConv(c, cout))

    def forward(self, xs):
        outs, last = [], None
        for x, project in zip(xs[::-1], self.projects):
            if last is not None:
                x = x + resize_bilinear_align_corners(last, x.shape[2], x.shape[3])
            last = project(x)
            outs.append(last)
        return outs[::-1]


def lite_transition(channels_prev, channels):
    layers = Transition()
    for i, c in enumerate(channels):
        if i < len(channels_prev):
            layers.append(nn.Identity() if c == channels_prev[i] else dw_pw(channels_prev[i], c, 1, relu=True))
        else:
            layers.append(nn.Sequential(dw_pw(channels_prev[-1], c, 2, relu=True)))
    return layers


class LiteHRNetBackbone(nn.Layer):
    def __init__(self, num_modules=(2, 4, 2), channels=(40, 80, 160, 320)):
        super().__init__()
        self.stem = Stem(32)
        prev = [32]
        for s, n in enumerate(num_modules):
            cur = list(channels[:s + 2])
            setattr(self, f"transition{s}", lite_transition(prev, cur))
            setattr(self, f"stage{s}", nn.Sequential(*[LiteHRModule(cur) for _ in range(n)]))
            prev = cur
        self.num_stages = len(num_modules)
        self.head_layer = IterativeHead(list(channels))

    def forward(self, x):
        xs = [self.stem(x)]
        for s in range(self.num_stages):
            xs = getattr(self, f"stage{s}")(getattr(self, f"transition{s}")(xs))
        return self.head_layer(xs)[0]


class SimpleHead(nn.Layer):
    """mmpose's TopDownSimpleHead with no deconvolutions: one 1x1 conv to K heatmaps."""

    def __init__(self, cin, num_joints):
        super().__init__()
        self.final_layer = nn.Conv2D(cin, num_joints, 1)

    def forward(self, x):
        return self.final_layer(x)


class LiteHRNet(nn.Layer):
    def __init__(self, num_modules=(2, 4, 2), num_joints=17):
        super().__init__()
        self.backbone = LiteHRNetBackbone(num_modules)
        self.keypoint_head = SimpleHead(40, num_joints)
        init_weights(self)

    def forward(self, x):
        return self.keypoint_head(self.backbone(x))


def init_weights(model):
    """Official initialisation: every conv N(0, 0.001) with zero bias; BN gamma 1, beta 0 (Paddle's default)."""
    normal, zero = nn.initializer.Normal(0.0, 0.001), nn.initializer.Constant(0.0)
    for layer in model.sublayers():
        if isinstance(layer, nn.Conv2D):
            normal(layer.weight)
            if layer.bias is not None:
                zero(layer.bias)


def build_model(name, num_joints=17):
    builders = {"hrnet_w32": lambda: HRNet(32, num_joints), "hrnet_w48": lambda: HRNet(48, num_joints),
                "lite_hrnet_18": lambda: LiteHRNet((2, 4, 2), num_joints),
                "lite_hrnet_30": lambda: LiteHRNet((3, 8, 3), num_joints)}
    if name not in builders:
        raise ValueError(f"--model: unknown model '{name}', expected one of {', '.join(MODEL_NAMES)}")
    # Paddle names parameters from a per-process counter and keys optimizer state by those names:
    # a fresh counter per model lets a resumed run (or another process) find its Adam moments again
    with paddle.utils.unique_name.guard():
        return builders[name]()


def set_device(name=None):
    """--device: 'gpu' when Paddle was built with CUDA, else 'cpu', unless asked otherwise. On CPU, Paddle's
    kernels get one thread per core (Paddle pins them to one unless told at import, with a warning)."""
    if name is None:
        name = "gpu" if paddle.is_compiled_with_cuda() else "cpu"
    if name.startswith("gpu") and not paddle.is_compiled_with_cuda():
        raise SystemExit(f"error: --device {name}: this Paddle build has no CUDA; "
                         f"install paddlepaddle-gpu or use --device cpu")
    if name == "cpu":
        paddle.base.core.set_num_threads(os.cpu_count() or 1)
    return paddle.set_device(name)


# ----------------------------------------------------------------------------------------------------
# Size: parameters and multiply-accumulates

def count_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)  # BN stats are non-trainable params in Paddle


def count_macs(model, input_size):
    """Multiply-accumulates of convolutions and linear layers for one (W, H) image, as the official
    get_model_summary counts them: weight elements x output positions. Returns (total, {layer name: MACs})."""
    macs, hooks = {}, []
    for name, layer in model.named_sublayers():
        if isinstance(layer, (nn.Conv2D, nn.Linear)):
            def hook(layer, inputs, output, name=name):
                positions = int(np.prod(output.shape[2:])) if isinstance(layer, nn.Conv2D) else 1
                macs[name] = macs.get(name, 0) + int(np.prod(layer.weight.shape)) * positions
            hooks.append(layer.register_forward_post_hook(hook))
    was_training = model.training
    model.eval()
    with paddle.no_grad():
        model(paddle.zeros([1, 3, input_size[1], input_size[0]]))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return sum(macs.values()), macs


def summarize(model, input_size):
    """One row per part of the network (stem, stages, transitions, head), then params and MACs."""
    parts = []
    for name, child in model.named_children():
        parts += [(f"{name}.{n}", c) for n, c in child.named_children()] if name == "backbone" else [(name, child)]
    shapes, hooks = {}, []
    for name, layer in parts:
        def hook(layer, inputs, output, name=name):
            outs = output if isinstance(output, (list, tuple)) else [output]
            shapes[name] = " ".join("x".join(str(d) for d in o.shape[1:]) for o in outs)
        hooks.append(layer.register_forward_post_hook(hook))
    total, macs = count_macs(model, input_size)
    for h in hooks:
        h.remove()
    lines = [f"{'part':<22}{'output (C x H x W per branch)':<44}{'params':>12}{'MACs':>10}"]
    for name, layer in parts:
        part_macs = sum(v for k, v in macs.items() if k == name or k.startswith(name + "."))
        if name in shapes:  # parts never called (none in these models) would have no output
            lines.append(f"{name:<22}{shapes[name]:<44}{count_params(layer):>12,}{part_macs / 1e6:>9.1f}M")
    # The official Lite-HRNet fuse loop evaluates fuse_layers[i][0] twice for rows i >= 1 (see LiteHRModule);
    # this port computes it once. MACs below count the official network, the line above what runs here.
    repeated = sum(v for k, v in macs.items() if re.search(r"\.fuse_layers\.[1-9]\.0\.", k) and "backbone." in k)
    if repeated:
        lines.append(f"MACs executed by this port: {total / 1e9:.3f}G "
                     f"(the official code evaluates the shared fuse term twice: +{repeated / 1e9:.3f}G)")
    lines.append(f"params: {count_params(model)}")
    lines.append(f"MACs: {(total + repeated) / 1e9:.3f}G")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Quantization-aware training (quantize.py), here so that every script can build a QAT checkpoint's model.
# Fake quantization: training sees the int8 rounding in the forward pass. Both gradients are written out
# (autograd would give round() a zero gradient almost everywhere, which stops training).

QMAX = 127  # 8 bits, symmetric: integers -127..127 times scale / 127, as Paddle's quantizers


class FakeQuant(paddle.autograd.PyLayer):
    """x -> nearest level k * scale / 127 (k = -127..127), inputs beyond +-scale clipped.

    Backward: the straight-through estimator, the gradient of the identity (as Paddle's
    fake_quantize_dequantize ops): the rounding is treated as noise that the weights learn to live with."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.x_needs_grad = not x.stop_gradient  # Paddle wants None back for inputs without gradient (images)
        return paddle.round(paddle.clip(x / scale, -1.0, 1.0) * QMAX) * (scale / QMAX)

    @staticmethod
    def backward(ctx, grad):
        return grad if ctx.x_needs_grad else None


class PACTClip(paddle.autograd.PyLayer):
    """PACT (Choi et al. 2018): clip(x, -alpha, alpha) with a learnable alpha; PaddleDetection's
    x - relu(x - alpha) + relu(-alpha - x).

    Backward: inputs inside [-alpha, alpha] pass the gradient; alpha collects it from the clipped ones,
    +1 per input above alpha and -1 per input below -alpha (the derivative of the clip in alpha)."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x, alpha)
        ctx.x_needs_grad = not x.stop_gradient
        return paddle.minimum(paddle.maximum(x, -alpha), alpha)

    @staticmethod
    def backward(ctx, grad):
        x, alpha = ctx.saved_tensor()
        above, below = (x > alpha).astype(grad.dtype), (x < -alpha).astype(grad.dtype)
        grad_alpha = ((grad * above).sum() - (grad * below).sum()).reshape([1])
        return (grad * (1 - above - below) if ctx.x_needs_grad else None), grad_alpha


def channel_abs_max(weight):
    """Per output channel max |w| of a conv weight (out, in/groups, kh, kw), shaped (out, 1, 1, 1): the
    int8 weight scale. An all-zero channel gets a tiny scale instead of 0, so it quantizes to zeros, not NaN."""
    return paddle.clip(weight.abs().max(axis=[1, 2, 3], keepdim=True), min=1e-8)


class QuantConv2D(nn.Layer):
    """A Conv2D on int8-rounded inputs and weights (PaddleDetection's PaddleSlim / Paddle ImperativeQuantAware setup):

        input  -> PACT clip -> fake quant with the moving-average abs-max scale
        weight -> fake quant with its per-output-channel abs-max scale
        conv2d with the float bias (BatchNorm is not folded during training, as in the seed)

    It keeps the wrapped conv's weight and bias objects, so checkpoint keys and optimizer state are those
    of the float model, plus `pact_alpha` and the three `input_*` buffers of this layer."""

    def __init__(self, conv, name, pact=True, pact_init=100.0, pact_lr=1000.0, moving_rate=0.9):
        super().__init__()
        if conv._data_format != "NCHW" or conv._padding_mode != "zeros":
            raise ValueError(f"{name}: only NCHW, zero-padded convolutions can be quantized")
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding = conv._stride, conv._padding
        self.dilation, self.groups = conv._dilation, conv._groups
        self.depthwise = isinstance(conv, DepthwiseConv2D)
        self.moving_rate = moving_rate
        self.pact_alpha = None
        if pact:  # one alpha per quantized input, starting at 100 and learning 1000x faster than the weights;
            # named after the layer: Adam keys its moments by parameter name, and --resume finds them by it
            self.pact_alpha = self.create_parameter([1], attr=paddle.ParamAttr(
                name=name + ".pact_alpha", initializer=nn.initializer.Constant(pact_init), learning_rate=pact_lr))
        # Paddle's moving-average abs-max quantizer state: accum and state start at 1, the scale at 0.001
        self.register_buffer("input_scale", paddle.full([1], 0.001))
        self.register_buffer("input_accum", paddle.ones([1]))
        self.register_buffer("input_state", paddle.ones([1]))

    def quantize_input(self, x):
        if self.pact_alpha is not None:
            x = PACTClip.apply(x, self.pact_alpha)
        if self.training:  # scale = running average of the batches' max |x|, updated before it is used
            with paddle.no_grad():
                paddle.assign(self.moving_rate * self.input_accum + x.abs().max(), self.input_accum)
                paddle.assign(self.moving_rate * self.input_state + 1, self.input_state)
                paddle.assign(self.input_accum / self.input_state, self.input_scale)
        return FakeQuant.apply(x, self.input_scale)

    def forward(self, x):
        weight = FakeQuant.apply(self.weight, channel_abs_max(self.weight).detach())
        if self.depthwise:
            return depthwise_conv3x3(self.quantize_input(x), weight, self.stride)
        return F.conv2d(self.quantize_input(x), weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


def replace_layers(model, kind, make):
    """Swap every sublayer of type kind for make(layer, dotted name), in place."""
    targets = [(name, layer) for name, layer in model.named_sublayers() if isinstance(layer, kind)]
    for name, layer in targets:
        *path, attribute = name.split(".")
        parent = model
        for part in path:
            parent = getattr(parent, part)
        setattr(parent, attribute, make(layer, name))  # a Sequential / LayerList entry keeps its place


def prepare_qat(model, pact=True, pact_init=100.0, pact_lr=1000.0, moving_rate=0.9):
    """Make a float model quantization-aware, in place: every Conv2D becomes a QuantConv2D.
    Load the float weights before (build order of the seed). Returns the model.
    The networks here have no Linear layers; a Linear would stay in float."""
    with paddle.utils.unique_name.guard():  # the alphas' names are taken per name scope: one per model
        replace_layers(model, nn.Conv2D,
                       lambda conv, name: QuantConv2D(conv, name, pact, pact_init, pact_lr, moving_rate))
    return model


def quantized_inputs(model):
    """{layer name: (input scale, PACT alpha or None)} of every QuantConv2D."""
    return {name: (layer.input_scale.item(), None if layer.pact_alpha is None else layer.pact_alpha.item())
            for name, layer in model.named_sublayers() if isinstance(layer, QuantConv2D)}


# ----------------------------------------------------------------------------------------------------
# Reading pickled Paddle files without running them. paddle.save writes pickle, and pickle lets a file name
# any function (os.system) for the reader to call; paddle.load calls it. This reader resolves only the few
# names paddle.save writes for arrays, so a hostile file is refused before anything in it runs.

class RefusedFile(ValueError):
    """A pickled file that asks for more than weights and training state, refused before anything in it ran."""


def _paddle_static_tensor(expression, namespace):
    # paddle.save writes a static-graph DenseTensor as eval('data', {'data': array}): the name is looked up
    # here and nothing is evaluated
    if expression != "data" or not isinstance(namespace, dict) or not isinstance(namespace.get("data"), np.ndarray):
        raise RefusedFile("builtins.eval on code of its own")
    return namespace["data"]


def _latin1_bytes(text, encoding):
    # pickle protocol 2 (Paddle 2.0's default) writes an array's raw bytes as _codecs.encode(text, "latin1")
    if encoding not in ("latin1", "latin-1"):
        raise RefusedFile(f"_codecs.encode to {encoding!r}")
    return text.encode("latin1")


# Every global that paddle.save (Paddle 2.x and 3.x, pickle protocols 2-4, numpy 1.x and 2.x) writes for
# weights, optimizer state and the plain values beside them; a pickle may call only these.
PICKLE_GLOBALS = {
    **{(module, "_reconstruct"): np.zeros(0).__reduce__()[0] for module in ("numpy.core.multiarray",
                                                                            "numpy._core.multiarray")},
    **{(module, "scalar"): np.float32(0).__reduce__()[0] for module in ("numpy.core.multiarray",
                                                                        "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{(module, name): value for module in ("builtins", "__builtin__")  # __builtin__: protocol 2
       for name, value in (("tuple", tuple), ("set", set), ("frozenset", frozenset), ("complex", complex),
                           ("eval", _paddle_static_tensor))},
    ("_codecs", "encode"): _latin1_bytes,
}


class WeightsUnpickler(pickle.Unpickler):
    """pickle's reader, with every global it may call looked up in PICKLE_GLOBALS and nothing imported."""

    def find_class(self, module, name):
        if (module, name) not in PICKLE_GLOBALS:
            raise RefusedFile(f"{module}.{name}")
        return PICKLE_GLOBALS[module, name]


def _map_leaves(obj, is_leaf, convert):
    if is_leaf(obj):
        return convert(obj)
    if isinstance(obj, dict):
        return type(obj)((key, _map_leaves(value, is_leaf, convert)) for key, value in obj.items())
    if isinstance(obj, (list, tuple, set)):
        return type(obj)(_map_leaves(value, is_leaf, convert) for value in obj)
    return obj


def _named_tensor(name, array):
    tensor = paddle.to_tensor(array)
    tensor.name = name
    return tensor


def read_paddle_file(path, source=None, return_numpy=True):
    """What paddle.load returns for the pickled files paddle.save writes (return_numpy as there), without
    running anything in them: a file that asks for anything outside PICKLE_GLOBALS is refused (RefusedFile, one
    line naming `source` and what it asked for) before that is called or even imported. As in paddle.load, big
    arrays split by protocols 2-3 are joined, a saved state dict's name table dropped, and Paddle 2.1's
    (name, array) tensors become arrays (named tensors with return_numpy=False, which also makes every other
    array a tensor when there are none)."""
    source = source or path
    try:
        with open(path, "rb") as f:
            obj = WeightsUnpickler(f, encoding="latin1").load()
        if isinstance(obj, dict):
            for key, split in obj.pop("UnpackBigParamInfor@@", {}).items():
                obj[key] = np.concatenate([obj.pop(part) for part in split["slices"]]).reshape(split["OriginShape"])
            names = obj.pop("StructuredToParameterName@@", None)
            if names is not None:  # a state dict: its arrays, plus each parameter's name
                if not return_numpy:
                    obj.update({key: _named_tensor(name, obj[key]) for key, name in names.items()
                                if isinstance(obj.get(key), np.ndarray)})
                return obj
        named = []

        def from_named(pair):
            named.append(pair[0])
            return pair[1] if return_numpy else _named_tensor(*pair)

        obj = _map_leaves(obj, lambda v: (isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
                                          and isinstance(v[1], np.ndarray)), from_named)
        if not named and not return_numpy:
            obj = _map_leaves(obj, lambda v: isinstance(v, np.ndarray), paddle.to_tensor)
        return obj
    except RefusedFile as err:
        raise RefusedFile(f"{source}: refused: the file asks to call {err}; "
                          f"only weights and training state are read") from None
    except Exception as err:  # not a pickle, cut short, or not paddle.save's layout
        raise ValueError(f"{source}: not a readable Paddle checkpoint "
                         f"({type(err).__name__}: {' '.join(str(err).split())})") from None


# ----------------------------------------------------------------------------------------------------
# Weights in: this project's .pdparams and training checkpoints, PaddleDetection's .pdparams,
# the official PyTorch checkpoints (.pth), and ImageNet-pretrained HRNet backbones.

def paddledetection_key(key):
    """This project's key (= the official PyTorch layout with Paddle BN buffer names) -> PaddleDetection's."""
    if key.startswith(("backbone.", "keypoint_head.")):  # Lite-HRNet: PD kept mmpose's tree, renaming bn -> norm
        return key.replace(".bn.", ".norm.").replace("keypoint_head.final_layer.", "final_conv.")
    rules = [  # HRNet: PD names every conv+BN pair "<name>.conv" / "<name>.norm" and counts from 1
        (r"^(conv|bn)([12])\.", lambda m: f"conv_layer1_{m[2]}.{'conv' if m[1] == 'conv' else 'norm'}."),
        (r"^layer1\.0\.downsample\.([01])\.", lambda m: f"la1.block_layer2_1.conv_down.{'conv' if m[1] == '0' else 'norm'}."),
        (r"^layer1\.(\d)\.(conv|bn)(\d)\.",
         lambda m: f"la1.block_layer2_{int(m[1]) + 1}.conv{m[3]}.{'conv' if m[2] == 'conv' else 'norm'}."),
        (r"^transition(\d)\.(\d)\.(?:0\.)?([01])\.",
         lambda m: f"tr{m[1]}.transition_tr{m[1]}_layer_{int(m[2]) + 1}.{'conv' if m[3] == '0' else 'norm'}."),
        (r"^stage(\d)\.(\d)\.branches\.(\d)\.(\d)\.(conv|bn)(\d)\.",
         lambda m: f"st{m[1]}.stage_st{m[1]}_{int(m[2]) + 1}.branches_func.bb_st{m[1]}_{int(m[2]) + 1}_branch_layer_"
                   f"{int(m[3]) + 1}_{int(m[4]) + 1}.conv{m[6]}.{'conv' if m[5] == 'conv' else 'norm'}."),
        (r"^stage(\d)\.(\d)\.fuse_layers\.(\d)\.(\d)\.(?:(\d)\.)?([01])\.",
         lambda m: f"st{m[1]}.stage_st{m[1]}_{int(m[2]) + 1}.fuse_func.residual_st{m[1]}_{int(m[2]) + 1}_layer_"
                   f"{int(m[3]) + 1}_{int(m[4]) + 1}{'' if m[5] is None else '_' + str(int(m[5]) + 1)}."
                   f"{'conv' if m[6] == '0' else 'norm'}."),
    ]
    if key.startswith("final_layer."):
        return key.replace("final_layer.", "final_conv.")
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return "backbone." + new
    raise KeyError(f"no PaddleDetection name for '{key}'")


def read_checkpoint(path, flag=None):
    """Any supported file -> (flat {name: numpy array}, its record or None), unwrapping training checkpoints
    and mmpose's dicts. The record (see model_record) is what this project's checkpoints say they are.
    flag: the option that named the file, for error messages."""
    source = f"{flag} {path}" if flag else path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith((".pth", ".pt")):
        try:
            import torch  # only needed to read the official PyTorch checkpoints
        except ImportError:
            raise SystemExit(f"error: reading {path} needs PyTorch: pip install torch (only for conversion)")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    else:
        obj = read_paddle_file(path, source)
    record = obj.get("record") if isinstance(obj, dict) and isinstance(obj.get("record"), dict) else None
    for wrapper in ("state_dict", "model"):  # mmpose checkpoints / this project's checkpoints
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{source}: expected a state dict of named arrays, got {type(obj).__name__}")
    state = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in obj.items()}
    return state, record


def rename_to_model_keys(state, model):
    """A checkpoint's keys -> this model's: DataParallel's 'module.' dropped, PyTorch BN buffer names and
    PaddleDetection's names translated; keys that fit nothing are kept as they are (convert_state_dict names them)."""
    renamed = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key[len("module."):] if key.startswith("module.") else key  # saved from DataParallel
        key = re.sub(r"running_mean$", "_mean", re.sub(r"running_var$", "_variance", key))
        renamed[key] = value
    own = model.state_dict()
    # PaddleDetection names (with or without "backbone.", as in its ImageNet files) never collide with ours
    from_pd = {paddledetection_key(k): k for k in own}
    from_pd.update({k[len("backbone."):]: v for k, v in from_pd.items() if k.startswith("backbone.")})
    return {from_pd.get(k, k): v for k, v in renamed.items()}


def convert_state_dict(state, model, pretrained=False):
    """Rename a checkpoint's keys into this model's; return (state, skipped keys).

    Raises ValueError naming counts and the first keys on any missing, unexpected or wrong-shaped entry.
    With pretrained=True (ImageNet backbones) keys the model lacks are skipped and the head may be missing.
    """
    own = model.state_dict()
    renamed = rename_to_model_keys(state, model)
    unexpected = [k for k in renamed if k not in own]
    missing = [k for k in own if k not in renamed]
    wrong_shape = [f"{k} {list(renamed[k].shape)} vs {list(own[k].shape)}" for k in own
                   if k in renamed and list(renamed[k].shape) != list(own[k].shape)]
    skipped = []
    if pretrained:
        skipped, unexpected = unexpected, []
        missing = [k for k in missing if not k.startswith(("final_layer.", "keypoint_head."))]
    problems = [f"{len(v)} {what} (e.g. {', '.join(v[:3])})"
                for what, v in (("missing", missing), ("unexpected", unexpected), ("wrong-shaped", wrong_shape)) if v]
    if problems:
        raise ValueError(f"checkpoint does not fit {type(model).__name__}: " + "; ".join(problems))
    return {k: v for k, v in renamed.items() if k in own}, skipped


def final_layer_name(model):
    """The 1x1 conv from the last features to one heatmap per joint: the only layer whose shape depends on the
    keypoint set (PaddleDetection calls it final_conv)."""
    return "keypoint_head.final_layer" if isinstance(model, LiteHRNet) else "final_layer"


def carry_joints_by_name(state, model, source_names, target_names):
    """Fit a state for a head of source_names joints (this model's key names, see rename_to_model_keys) to
    model's target_names: the final layer's weight and bias rows of every joint both sets name alike (as
    data.canonical_joint_names reads them: 'LeftWrist' is 'left_wrist') move to the target's order; the other rows
    are model's own, as build_model initialised them (init_weights). Returns (state, [(target, source) index
    pairs carried]). A state whose final layer has other input channels is left as it is (a wrong-shaped
    entry for convert_state_dict to name: another network)."""
    source_canonical, target_canonical = canonical_joint_names(source_names), canonical_joint_names(target_names)
    carried = [(i, source_canonical.index(name)) for i, name in enumerate(target_canonical)
               if name in source_canonical]
    own, state = model.state_dict(), dict(state)
    for key in (f"{final_layer_name(model)}.weight", f"{final_layer_name(model)}.bias"):
        if key not in state or state[key].shape[1:] != tuple(own[key].shape[1:]):
            continue
        if len(state[key]) != len(source_names):
            raise ValueError(f"its final layer predicts {len(state[key])} keypoints, not the {len(source_names)} "
                             f"its record names ({', '.join(source_names[:3])}, ...)")
        rows = own[key].numpy().copy()
        for target, source in carried:
            rows[target] = state[key][source]
        state[key] = rows
    return state, carried


def load_weights(model, path, pretrained=False, log=print, keypoint_names=None, flag="weights file"):
    """Load a checkpoint (path or http(s) URL) into model, all or nothing. keypoint_names: the joints model
    predicts, when they may differ from the file's (training from --weights on another keypoint set): the final
    layer is then carried by name (see load_state). flag: the option that named the file, for error messages."""
    path = resolve_path_or_url(path, what=flag)
    state, record = read_checkpoint(path, flag)
    keypoints = None
    if keypoint_names is not None:
        keypoints = (record["keypoint_names"] if record else None, list(keypoint_names))
    try:
        return load_state(model, state, pretrained, log, f"{flag} {path}", keypoints)
    except ValueError as err:
        raise ValueError(f"{flag} {path}: {err}") from None


def load_state(model, state, pretrained=False, log=print, source="checkpoint", keypoints=None):
    """Load a state read by read_checkpoint into model, all or nothing (see convert_state_dict).
    keypoints = (the checkpoint's joint names, or None if it does not say; model's joint names): every entry but
    the final layer must fit, and the final layer's rows are carried by name (carry_joints_by_name), said in one
    line unless the two keypoint sets are the same. A file that does not say has COCO's 17 joints, or, with
    another number of heatmaps than 17, model's (as files were read before records existed)."""
    if keypoints is not None:
        source_names, target_names = keypoints
        state = rename_to_model_keys(state, model)
        if source_names is None:
            rows = state.get(f"{final_layer_name(model)}.bias")
            source_names = (target_names if rows is not None and len(rows) == len(target_names) != 17
                            else COCO_KEYPOINT_NAMES)
        state, carried = carry_joints_by_name(state, model, list(source_names), target_names)
    state, skipped = convert_state_dict(state, model, pretrained)
    own = model.state_dict()
    with warnings.catch_warnings():  # an ImageNet backbone has no head: counted once below, not per key
        warnings.filterwarnings("ignore", message="Skip loading")
        model.set_state_dict({k: paddle.to_tensor(v, dtype=own[k].dtype) for k, v in state.items()})
    if skipped:
        log(f"{source}: loaded {len(state)} backbone entries, skipped {len(skipped)} not in this model "
            f"(classifier etc., e.g. {', '.join(skipped[:3])})")
    if keypoints is not None and carried != [(i, i) for i in range(len(source_names))]:
        new = [name for i, name in enumerate(target_names) if i not in dict(carried)]
        log(f"{source}: every layer but the final one loaded; final layer: {len(carried)} of {len(target_names)} "
            f"joints carried by name{joint_list([target_names[i] for i, _ in carried])}, {len(new)} new"
            f"{joint_list(new)}")
    return model


def joint_list(names, shown=6):
    return f" ({', '.join(names[:shown])}{', ...' if len(names) > shown else ''})" if names else ""


# ----------------------------------------------------------------------------------------------------
# What a checkpoint says it is. Every checkpoint this project writes stores a record beside the weights
# (as nanoGPT stores model_args), so a script given --weights builds the right model with no flag repeated.

def model_record(model_name, input_size, info, udp=False, qat=False, decode="default", dark_kernel=3):
    """What a checkpoint says it holds, saved beside its weights as {"model": state, "record": record}:
    model (network name), num_joints, input_size [H, W] it was trained at, udp, qat (quantization-aware layers),
    decode and dark_kernel (the heatmap decoding its training evaluated with, which evaluate.py and predict.py
    take too), and from info (data.KeypointInfo): keypoint_names, flip_pairs, skeleton (0-based pairs, for
    drawing), sigmas (OKS) and upper_body_ids (half-body augmentation). Every script's --weights builds the model
    from it (build_from_checkpoint), so a flag that repeats it is not needed and one that contradicts it is an
    error. A run's last.pdparams adds optimizer, epoch, step, best_ap and args (its flags) for --resume.
    input_size: (width, height); info: data.KeypointInfo of its keypoints."""
    width, height = input_size
    return {"model": model_name, "num_joints": info.num_joints, "input_size": [int(height), int(width)],
            "udp": bool(udp), "qat": bool(qat), "decode": decode, "dark_kernel": int(dark_kernel),
            **info.to_record()}


def decoding_of(description):
    """(decode, dark_kernel) a checkpoint's record or an export's pose.json names; the official decoding for
    files that name none (older ones, and those written from elsewhere)."""
    return description.get("decode", "default"), int(description.get("dark_kernel", 3))


def is_qat_model(model):
    return any(isinstance(layer, QuantConv2D) for layer in model.sublayers())


def build_from_checkpoint(state, record, source, model_name=None, input_size=None, info=None, udp=None, log=print):
    """The model a checkpoint (read_checkpoint's state and record) holds, loaded all or nothing; returns
    (model, record). With a record, flags that contradict it are errors, and an input size other than the
    trained one is used with a note (fully convolutional: any multiple of 32 runs). Without one (official .pth,
    PaddleDetection .pdparams, older files) model_name is needed, and the keypoints are `info` (default:
    COCO's 17), the input size `input_size` (default 256x192). input_size: (width, height); udp: None = unset."""
    if record is None:
        if model_name is None:
            raise ValueError(f"{source} does not say which network it holds (not written by this project): "
                             f"give --model")
        info = info or keypoint_info_from_category(COCO_PERSON_CATEGORY)
        qat = any(k.endswith(".input_scale") for k in state)  # quantize.py's checkpoints from before records
        record = model_record(model_name, input_size or (192, 256), info, bool(udp), qat)
    else:
        if model_name is not None and model_name != record["model"]:
            raise ValueError(f"--model {model_name}: {source} holds a {record['model']}; leave --model out")
        if info is not None and list(info.names) != list(record["keypoint_names"]):
            raise ValueError(f"{source}: its model predicts {record['num_joints']} keypoints "
                             f"({', '.join(record['keypoint_names'][:3])}, ...), the data has {info.num_joints} "
                             f"({', '.join(info.names[:3])}, ...)")
        if udp and not record["udp"]:
            raise ValueError(f"--udp: {source} was trained without UDP; leave --udp out")
        trained = tuple(record["input_size"][::-1])
        if input_size is not None and tuple(input_size) != trained:
            log(f"note: {source} was trained at {trained[1]}x{trained[0]}; running it at "
                f"{input_size[1]}x{input_size[0]} as --input-size asks")
            record = dict(record, input_size=[int(input_size[1]), int(input_size[0])])
    model = build_model(record["model"], record["num_joints"])
    if record["qat"]:
        prepare_qat(model, pact=any(k.endswith(".pact_alpha") for k in state))
    try:
        load_state(model, state, log=log, source=source)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    return model, record


def add_checkpoint_flags(parser, weights_help, required=False):
    """--weights, and the flags only a file without a record needs (official and PaddleDetection weights)."""
    parser.add_argument("--weights", required=required, help=weights_help)
    parser.add_argument("--model", choices=MODEL_NAMES,
                        help="network of --weights; only for files that do not say (official, PaddleDetection)")
    parser.add_argument("--input-size", default=None,
                        help="crop HEIGHTxWIDTH (default: the size --weights was trained at, else 256x192)")
    parser.add_argument("--udp", action="store_true",
                        help="--weights was trained with UDP (data.py --udp); only for files that do not say")


def load_checkpoint(path, model_name=None, input_size=None, info=None, udp=None, log=print, flag="--weights"):
    """read_checkpoint + build_from_checkpoint for a path or http(s) URL: (model, record). flag: the option
    that named the file, for error messages."""
    path = resolve_path_or_url(path, what=flag)
    state, record = read_checkpoint(path, flag)
    return build_from_checkpoint(state, record, f"{flag} {path}", model_name, input_size, info, udp, log)


def save_checkpoint(obj, path):
    """Write atomically: a crash mid-write leaves the previous file intact."""
    with atomic_output(path) as tmp:
        paddle.save(obj, tmp)


def main(argv=None):
    p = argparse.ArgumentParser(description="Model summary, parameter/MAC counts and checkpoint conversion.")
    p.add_argument("--model", default="hrnet_w32", choices=MODEL_NAMES, help="network to build")
    p.add_argument("--input-size", default="256x192", help="input height x width, multiples of 32")
    p.add_argument("--num-joints", type=int, default=17, help="number of keypoints (heatmap channels)")
    p.add_argument("--convert", nargs=2, metavar=("IN", "OUT"),
                   help="read any supported checkpoint (.pdparams, PaddleDetection, official .pth) and write OUT.pdparams")
    p.add_argument("--pretrained", action="store_true", help="with --convert: IN is an ImageNet backbone (head left at init)")
    p.add_argument("--device", default=None, help="cpu or gpu (default: gpu if Paddle has CUDA)")
    args = p.parse_args(argv)
    set_device(args.device)
    try:
        w, h = parse_input_size(args.input_size)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    model = build_model(args.model, args.num_joints)
    if args.convert:
        src, dst = args.convert
        try:
            load_weights(model, src, pretrained=args.pretrained, flag="--convert")
        except (ValueError, OSError) as e:
            raise SystemExit("error: " + " ".join(str(e).split()))
        checkpoint = {"model": model.state_dict()}
        if args.num_joints == len(COCO_PERSON_CATEGORY["keypoints"]) and not args.pretrained:
            # the published checkpoints are COCO's: record that, so no script needs --model for this file
            checkpoint["record"] = model_record(args.model, (w, h), keypoint_info_from_category(COCO_PERSON_CATEGORY))
        save_checkpoint(checkpoint, dst)
        print(f"wrote {dst} ({args.model}, {len(checkpoint['model'])} entries"
              f"{', COCO keypoints, ' + args.input_size if 'record' in checkpoint else ''})")
        return
    print(f"{args.model}, input {h}x{w}, output {args.num_joints}x{h // 4}x{w // 4} heatmaps")
    print(summarize(model, (w, h)))


if __name__ == "__main__":
    run_script(main)
