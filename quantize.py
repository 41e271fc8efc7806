"""
PACT quantization-aware training (QAT) of HRNet / Lite-HRNet, and an int8 export that OpenVINO and Paddle
Inference (oneDNN) run as real int8 on CPU: the seed's LiteHRNet-30 69.4 -> 68.9 AP recipe, in plain Paddle.

    python quantize.py --weights runs/lite_hrnet_18/best.pdparams      # synthetic default: a short fine-tune
    python quantize.py --model lite_hrnet_30 --weights lite_hrnet_30.pdparams --data data/coco \
                       --input-size 256x192                            # the seed's recipe (50 epochs)
    python quantize.py --model lite_hrnet_18 --input-size 128x96 \
                       --qat-weights runs/lite_hrnet_18_qat/best.pdparams --export exported/lite18_int8

Every training flag of train.py works here too: the loop is train.py's, run on the fake-quantized model.
At the end the QAT weights are exported as an int8 inference model (--export) and scored again, now
running as int8 (--backend: OpenVINO when installed, else Paddle Inference); with --onnx also as ONNX.
"""
import os
import sys
import warnings

if "--verbose" not in sys.argv:  # Paddle's C++ log lines (e.g. "PIR not support input out tensor"), read at import
    os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time note about C++ extensions

import argparse
import copy

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

import train
from data import parse_input_size, run_script
from evaluate import PredictorModel, evaluate_model
from export import (BACKENDS, FLOAT_KEYS, append_op, check_export, create_predictor, export_onnx,
                    import_onnx_converter, read_pose_json, save_legacy_program, staged_files, write_pose_json)
from model import (QMAX, QuantConv2D, build_model, channel_abs_max, load_checkpoint, load_weights, prepare_qat,
                   quantized_inputs, replace_layers, set_device)

# ----------------------------------------------------------------------------------------------------
# int8 export. Paddle Inference's oneDNN int8 passes (Config.enable_mkldnn_int8) work on legacy programs
# (.pdmodel; PIR programs have no int8 CPU passes in Paddle 3.3.1) in Paddle's "ONNX format": every
# quantized input goes through quantize_linear -> dequantize_linear with its scale, every int8 weight
# through dequantize_linear with its per-channel scales. The passes read the scales, drop those ops and
# run the convolutions (with BatchNorm and activations fused in) on int8 data. OpenVINO reads the same
# program (export.py's legacy format) and runs those convolutions in int8 too.

def conv_bn_pairs(model, input_size):
    """{QuantConv2D name: BatchNorm2D name} for every BatchNorm whose input is a conv's output, found by
    running one zero image through the model (in eval mode). In these networks such a conv output feeds
    nothing else, so the BatchNorm can be folded into the conv."""
    outputs, pairs, hooks = {}, {}, []

    def remember(name):
        def hook(layer, inputs, output):
            outputs[id(output)] = (name, output)  # holding the tensor keeps its id unique during the pass
        return hook

    def match(name):
        def hook(layer, inputs):
            if id(inputs[0]) in outputs:
                pairs[outputs[id(inputs[0])][0]] = name
        return hook

    for name, layer in model.named_sublayers():
        if isinstance(layer, QuantConv2D):
            hooks.append(layer.register_forward_post_hook(remember(name)))
        elif isinstance(layer, nn.BatchNorm2D):
            hooks.append(layer.register_forward_pre_hook(match(name)))
    with paddle.no_grad():
        model(paddle.zeros([1, 3, input_size[1], input_size[0]]))
    for h in hooks:
        h.remove()
    return pairs


def _quant_op(kind, x, scale, zero_point, axis):
    """quantize_linear / dequantize_linear (Paddle's Python API only creates them inside its own
    static-graph quantization passes); round_type 1 rounds ties away from 0, as paddle.round."""
    return append_op(kind, {"X": [x], "Scale": [scale], "ZeroPoint": [zero_point]},
                     {"quant_axis": axis, "bit_length": 8, "qmin": -QMAX, "qmax": QMAX, "is_test": True,
                      "round_type": 1}, output="Y")


def fold_conv_bn(layer, bn):
    """(int8 weight codes, per-output-channel scale, bias) of a QuantConv2D with the BatchNorm that follows it
    (or None) folded in. Folding is exact for per-channel scales: BN multiplies channel c by k_c, which only
    rescales that channel's codes' scale (and flips their sign when k_c < 0)."""
    weight = layer.weight.numpy().astype(np.float64)
    abs_max = channel_abs_max(layer.weight).numpy().reshape(-1).astype(np.float64)
    codes = np.round(np.clip(weight / abs_max[:, None, None, None], -1, 1) * QMAX)
    bias = np.zeros(len(abs_max)) if layer.bias is None else layer.bias.numpy().astype(np.float64)
    if bn is not None:
        k = bn.weight.numpy() / np.sqrt(bn._variance.numpy() + bn._epsilon)
        bias = (bias - bn._mean.numpy()) * k + bn.bias.numpy()
        codes, abs_max = codes * np.sign(k)[:, None, None, None], abs_max * np.abs(k)
    return codes, abs_max, bias


def conv_with_channel_bias(layer, x, weight):
    # the classic per-channel bias add (axis 1) that oneDNN fuses into the conv; F.conv2d's reshaped
    # bias is not recognised, leaving an extra op per conv and a 25 s graph optimisation
    x = F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return append_op("elementwise_add", {"X": [x], "Y": [layer.bias]}, {"axis": 1})


class Int8Conv2D(nn.Layer):
    """The exported form of a QuantConv2D, with the following BatchNorm (if any) folded in (fold_conv_bn): int8
    weight codes stored as int8 (a quarter of the float file), a float scale and bias per output channel, the
    input scale.

    PACT is left out, as in the seed's export: the quantizer clips inputs to [-scale, scale] anyway, so
    clip(x, -alpha, alpha) before it changes nothing when scale <= alpha (export_int8 checks)."""

    def __init__(self, layer, bn, zeros):
        super().__init__()
        codes, abs_max, bias = fold_conv_bn(layer, bn)
        self.register_buffer("weight_int8", paddle.to_tensor(codes.astype(np.int8)))
        self.register_buffer("weight_scale", paddle.to_tensor(abs_max.astype(np.float32)))
        self.register_buffer("input_scale", layer.input_scale.clone())
        self.register_buffer("bias", paddle.to_tensor(bias.astype(np.float32)))
        # symmetric quantization: the zero points are 0, shaped like their scales (OpenVINO insists), shared
        self.register_buffer("input_zero_point", zeros(1))
        self.register_buffer("weight_zero_point", zeros(len(abs_max)))
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups

    def forward(self, x):
        x = _quant_op("quantize_linear", x, self.input_scale, self.input_zero_point, -1)
        x = _quant_op("dequantize_linear", x, self.input_scale, self.input_zero_point, -1)
        weight = _quant_op("dequantize_linear", self.weight_int8, self.weight_scale, self.weight_zero_point, 0)
        return conv_with_channel_bias(self, x, weight)


class FoldedConv2D(nn.Layer):
    """The float twin of Int8Conv2D, for the quantized export's float program: the same folded weights, the
    int8 codes times their steps (the weights the QAT model computes with), in float32, and float inputs
    clipped where the QAT model clips them (PACT's alpha or the quantizer's scale, the smaller). It differs
    from the QAT model only by the rounding of the inputs. Without the clip it is another network: QAT
    learns to rely on it (the teaching chain lost 0.10 AP without it, README Quantization). input_limit None:
    no clip (drop_idle_clips)."""

    def __init__(self, layer, bn):
        super().__init__()
        codes, abs_max, bias = fold_conv_bn(layer, bn)
        weight = codes * (abs_max / QMAX)[:, None, None, None]  # the step of a code is scale / 127
        self.register_buffer("weight", paddle.to_tensor(weight.astype(np.float32)))
        self.register_buffer("bias", paddle.to_tensor(bias.astype(np.float32)))
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
        scale, alpha = layer.input_scale.item(), None if layer.pact_alpha is None else layer.pact_alpha.item()
        self.input_limit = scale if alpha is None else min(scale, alpha)

    def forward(self, x):
        if self.input_limit is not None:
            x = paddle.clip(x, -self.input_limit, self.input_limit)
        return conv_with_channel_bias(self, x, self.weight)


def heatmap_change(heatmaps, reference):
    """Relative RMS change of each image's heatmaps against a reference, averaged over the images."""
    diff = ((heatmaps - reference) ** 2).sum(axis=[1, 2, 3]) / (reference ** 2).sum(axis=[1, 2, 3]).clip(min=1e-30)
    return float(diff.sqrt().mean())


def drop_idle_clips(twin, images, tolerance):
    """Take out of a float twin (FoldedConv2D layers) the input clips its output does not need, and return the
    names of the layers that keep theirs. Every clip costs CPU time even where OpenVINO fuses it into the conv
    before (README Quantization), and on real crops most cut off next to nothing while a few cut outliers many
    times their limit. So the clips go in order of how much of their input (squared, on images) they cut off,
    as many as keep the heatmaps within tolerance (heatmap_change) of those with every clip: a binary search,
    which leaves either every clip out or one more clip over the tolerance."""
    convs = [(name, layer) for name, layer in twin.named_sublayers() if isinstance(layer, FoldedConv2D)]
    cut = {}

    def measure(name):
        def hook(layer, inputs):
            x = inputs[0]
            cut[name] = float((F.relu(x.abs() - layer.input_limit) ** 2).sum() / (x ** 2).sum().clip(min=1e-30))
        return hook

    hooks = [layer.register_forward_pre_hook(measure(name)) for name, layer in convs]
    with paddle.no_grad():
        images = paddle.to_tensor(images)
        reference = twin(images)
        for hook in hooks:
            hook.remove()
        order = sorted(convs, key=lambda pair: cut[pair[0]])
        limits = [layer.input_limit for _, layer in order]

        def drop(count):  # the count clips that cut least left out; their change of the heatmaps
            for i, (_, layer) in enumerate(order):
                layer.input_limit = None if i < count else limits[i]
            return heatmap_change(twin(images), reference)

        low, high = 0, len(order)  # drop(low) is within tolerance; drop(high + 1) is not
        while low < high:
            middle = (low + high + 1) // 2
            if drop(middle) <= tolerance:
                low = middle
            else:
                high = middle - 1
        drop(low)
    return [name for name, _ in order[low:]]


def folded_twin(model, pairs, make_conv):
    """A copy of a QAT model in eval mode with every QuantConv2D replaced by make_conv(conv, the BatchNorm that
    follows it or None) and those BatchNorms by identities (pairs: conv_bn_pairs)."""
    twin = copy.deepcopy(model)
    twin.eval()
    layers = dict(twin.named_sublayers())
    replace_layers(twin, QuantConv2D, lambda layer, name: make_conv(layer, layers.get(pairs.get(name))))
    folded = set(pairs.values())
    replace_layers(twin, nn.BatchNorm2D, lambda bn, name: nn.Identity() if name in folded else bn)
    return twin


def export_int8(model, out_dir, model_name, input_size, info, udp=False, float_program=True,
                calibration_images=None, clip_tolerance=0.01, decoding=("default", 3)):
    """Write out_dir/model.pdmodel + model.pdiparams (the int8 program) and pose.json for a trained QAT model
    (left unchanged); with float_program also float.pdmodel + float.pdiparams, the same folded weights in
    float (FoldedConv2D), which export.create_predictor runs where int8 is not faster (Lite-HRNet: its time is
    in small non-convolution ops that int8 does not speed up, and quantizing adds ops). With calibration_images
    (N x 3 x height x width crops) the float program keeps only the input clips it needs (drop_idle_clips at
    clip_tolerance), else all. input_size = (width, height); decoding: pose.json's (export.pose_metadata).
    Returns {"files": {name: bytes}, "folded_bn": count, "float_clips": (names of the convs whose input the
    float program clips, number of convs)}."""
    over = {name: s / a - 1 for name, (s, a) in quantized_inputs(model).items() if a is not None and s > a}
    if over:
        name = max(over, key=over.get)
        print(f"warning: {len(over)} quantized inputs have a scale above their PACT alpha (at most {over[name]:.2%}, "
              f"{name}); the int8 model clips them at the scale, the QAT model at alpha")
    probe = copy.deepcopy(model)  # conv_bn_pairs runs it in eval mode: the BatchNorm statistics stay
    probe.eval()
    pairs = conv_bn_pairs(probe, input_size)
    shared = {}

    def zeros(n):  # int32 zeros of length n, one buffer per length
        return shared.setdefault(n, paddle.zeros([n], "int32"))

    programs = [("model", folded_twin(model, pairs, lambda layer, bn: Int8Conv2D(layer, bn, zeros)))]
    result = {"folded_bn": len(pairs)}
    if float_program:
        twin = folded_twin(model, pairs, FoldedConv2D)
        convs = [name for name, layer in twin.named_sublayers() if isinstance(layer, FoldedConv2D)]
        kept = convs if calibration_images is None else drop_idle_clips(twin, calibration_images, clip_tolerance)
        programs.append(("float", twin))
        result["float_clips"] = (kept, len(convs))
    names = [prefix + ext for prefix, _ in programs for ext in (".pdmodel", ".pdiparams")]
    # model.pdiparams.info, which only paddle.jit.load reads, is left behind in the staging folder
    with staged_files(out_dir, names + ["pose.json"]) as staging:
        for prefix, program in programs:
            save_legacy_program(program, os.path.join(staging, prefix), input_size, [sys.modules[__name__]])
        # the int8 program serves paddle.inference (oneDNN int8) and OpenVINO (legacy_files) alike
        write_pose_json(staging, model_name, input_size, info, udp, quantized=True, model_file="model.pdmodel",
                        params_file="model.pdiparams", legacy_files=("model.pdmodel", "model.pdiparams"),
                        float_files=tuple(names[2:]) if float_program else None, decoding=decoding)
    result["files"] = {f: os.path.getsize(os.path.join(out_dir, f)) for f in names}
    return result


def export_quantized_onnx(model, out_dir, tolerance=1e-4, log=print):
    """The ONNX program of a quantized export (export.export_onnx), checked, with one line on log: the int8
    program as ONNX QDQ (model.onnx) where paddle2onnx converts it and onnxruntime runs it within one quantization
    step of the QAT model (max |difference| <= max |QAT output| / 127 on a random batch), else the float program
    (float.onnx), checked against paddle.inference's run of it (relative difference <= tolerance), the line
    saying why. paddle2onnx 2.1.0 converts quantize_linear to float8 only. Returns the path."""
    try:
        path = export_onnx(out_dir)
        diff, relative = check_export(model, out_dir, device="cpu", backend="onnxruntime", precision="int8")
        if relative <= 1 / QMAX:
            log(f"{path}: the int8 program as ONNX QDQ; onnxruntime vs the QAT model on a random batch: max diff "
                f"{diff:.3g} ({relative * QMAX:.2f} quantization steps of the largest output)")
            return path
        os.remove(path)
        reason = f"onnxruntime runs paddle2onnx's int8 program {relative * QMAX:.1f} quantization steps off QAT"
    except ValueError as err:
        reason = " ".join(str(err).split())
    if None in (read_pose_json(out_dir).get(key) for key in FLOAT_KEYS):
        raise ValueError(f"--onnx: no int8 ONNX program ({reason}), and the export has no float program to convert "
                         f"instead (leave out --no-float-program)")
    path = export_onnx(out_dir, float_program=True)
    float_program = PredictorModel(create_predictor(out_dir, "paddle", "cpu", precision="fp32"))
    diff, relative = check_export(float_program, out_dir, device="cpu", backend="onnxruntime")
    log(f"{path}: the float program, no int8 ONNX ({reason}); onnxruntime vs paddle.inference on a random batch: "
        f"max diff {diff:.3g} ({relative:.3g} of the largest output)")
    if not relative <= tolerance:
        raise ValueError(f"{path} disagrees with the float program on paddle.inference: max diff {diff:.3g} is "
                         f"{relative:.3g} of the largest output (> {tolerance:g})")
    return path


def calibration_crops(dataset, count=16):
    """count training crops spread evenly over the dataset (its augmentation is seeded: the same crops each run)."""
    indices = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    return np.stack([dataset[int(i)][0] for i in indices]).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# command line

QAT_RECIPES = {
    # the seed's PACT run (lite_hrnet_30_256x192_coco_pact.yml): 50 epochs from the float weights, Adam 1e-3,
    # x0.1 at epochs 40 and 45, 500 warmup steps; the rest (batch, loss, model) as the float recipe
    family: dict(train.RECIPES[family], epochs=50, milestones=[40, 45], lr=1e-3, warmup_steps=500)
    for family in ("hrnet", "lite_hrnet")}
# on the synthetic set (after `python train.py`): three passes over its training images at a tenth of the float
# run's peak learning rate
QAT_RECIPES["synthetic"] = dict(train.RECIPES["synthetic"], epochs=3, schedule="step", milestones=[], lr=4e-4,
                                warmup_steps=20, batch_size=32, eval_every=3)


def build_parser():
    p = train.build_parser(__doc__.split("\n\n")[1].strip(), QAT_RECIPES, run_name="{model}_qat")
    p.add_argument("--qat-weights", default=None,
                   help="a QAT checkpoint of this script (e.g. runs/<model>_qat/best.pdparams): no training, "
                        "only evaluate and export it")
    p.add_argument("--export", default=None, help="folder for the int8 inference model (None: <out>/int8)")
    p.add_argument("--pact", action=argparse.BooleanOptionalAction, default=True,
                   help="PACT clipping before every quantized input (the seed's activation_preprocess_type)")
    p.add_argument("--pact-init", type=float, default=100.0, help="initial PACT clip alpha")
    p.add_argument("--pact-lr", type=float, default=1000.0, help="learning-rate multiplier of the PACT alphas")
    p.add_argument("--moving-rate", type=float, default=0.9, help="decay of the activation scales' moving average")
    p.add_argument("--float-program", action=argparse.BooleanOptionalAction, default=True,
                   help="also export the folded QAT weights, with the QAT model's input clipping, as a float "
                        "program (float.pdmodel), which --model-dir runs where int8 is not faster on the "
                        "machine (precision auto); --eval-int8 scores both")
    p.add_argument("--clip-tolerance", type=train.in_range(float, 0), default=0.01,
                   help="the float program leaves out the input clips that change its heatmaps on 16 training "
                        "crops by at most this much together (relative RMS; each clip costs CPU time); 0 keeps "
                        "every clip that cuts anything")
    p.add_argument("--eval-int8", action=argparse.BooleanOptionalAction, default=True,
                   help="score the exported int8 model (and the float program) on val (on CPU, with --backend)")
    p.add_argument("--onnx", action="store_true",
                   help="also write the export as ONNX (needs paddle2onnx and onnxruntime): the int8 program as QDQ "
                        "where paddle2onnx converts it faithfully, else the float program, with a line saying why")
    # onnxruntime runs the one ONNX program of the export, not its int8 and float programs side by side
    p.add_argument("--backend", choices=[b for b in BACKENDS if b != "onnxruntime"], default="auto",
                   help="runtime of that score: openvino, paddle (oneDNN int8) or auto (OpenVINO if installed)")
    return p


def load_qat_model(path, model_name=None, info=None):
    """A QAT checkpoint of this script (best/last.pdparams) -> the quantization-aware model it holds."""
    model, record = load_checkpoint(path, model_name, info=info, flag="--qat-weights")
    if not record["qat"]:
        raise ValueError(f"{path}: no quantizer scales in it, not a QAT checkpoint (float weights go to --weights)")
    return model


def main(argv=None):
    args = build_parser().parse_args(argv)
    args = train.apply_recipe(args, QAT_RECIPES, weights=args.qat_weights or args.weights,
                              flag="--qat-weights" if args.qat_weights else "--weights")
    export_dir = args.export or os.path.join(args.out, "int8")
    if not (args.weights or args.qat_weights or args.resume):
        raise SystemExit("error: --weights FLOAT_CHECKPOINT is needed (the trained float model to fine-tune, e.g. "
                         "runs/lite_hrnet_18/best.pdparams after `python train.py`), or --qat-weights / --resume")
    try:
        if args.onnx:  # before any work
            import_onnx_converter()
        set_device(args.device)
        datasets = train.build_datasets(args)
        val_set = datasets[1]
        num_joints = val_set.info.num_joints

        def evaluate(network):  # as the QAT epochs evaluate: every AP below compares with theirs
            return evaluate_model(network, val_set, args.batch_size, args.flip, args.decode, args.dark_kernel,
                                  num_workers=args.workers)

        float_ap, qat_ap = None, -1.0
        if args.qat_weights:
            model = load_qat_model(args.qat_weights, args.model, val_set.info)
        else:
            model = build_model(args.model, num_joints)
            if args.weights and not args.resume:
                load_weights(model, args.weights, keypoint_names=val_set.info.names, flag="--weights")
                _, stats = evaluate(model)
                float_ap = stats["AP"]
                print(f"float model {args.weights}: AP {float_ap:.3f}")
            prepare_qat(model, args.pact, args.pact_init, args.pact_lr, args.moving_rate)
            _, _, qat_ap = train.train(args, model=model, datasets=datasets)
            model = load_qat_model(os.path.join(args.out, "best.pdparams"))
        if qat_ap < 0:  # not trained here, or trained without an evaluation
            _, stats = evaluate(model)
            qat_ap = stats["AP"]
        alphas = [a for _, a in quantized_inputs(model).values() if a is not None]
        if alphas:
            print(f"PACT alphas: min {min(alphas):.3g}, median {float(np.median(alphas)):.3g}, max {max(alphas):.3g}")
        size = parse_input_size(args.input_size)
        crops = calibration_crops(datasets[0]) if args.float_program else None
        result = export_int8(model, export_dir, args.model, size, val_set.info, args.udp, args.float_program, crops,
                             args.clip_tolerance, (args.decode, args.dark_kernel))
        print(f"int8 model: {export_dir} ({', '.join(f'{k} {v / 1e6:.2f} MB' for k, v in result['files'].items())}; "
              f"{result['folded_bn']} BatchNorms folded)")
        if args.float_program:
            kept, convs = result["float_clips"]
            print(f"float program: {len(kept)} of {convs} conv inputs clipped as in QAT; the other clips change its "
                  f"heatmaps by <= {args.clip_tolerance:g} on {len(crops)} training crops")
        if args.onnx:
            export_quantized_onnx(model, export_dir)
        exported_ap = {}  # precision -> AP of the export run so (fp32: its float program)
        for precision in (["int8"] + ["fp32"] * args.float_program) if args.eval_int8 else []:
            run = PredictorModel(create_predictor(export_dir, args.backend, "cpu", precision=precision,
                                                  verbose=args.verbose))
            _, stats = evaluate(run)
            exported_ap[precision] = stats["AP"]
    except (ValueError, OSError) as err:
        raise SystemExit("error: " + " ".join(str(err).split()))
    line = "" if float_ap is None else f"float {float_ap:.3f}  "
    line += f"QAT (fake-quant) {qat_ap:.3f}"
    line += "".join(f"  {what} {exported_ap[p]:.3f}" for p, what in (("int8", "int8"), ("fp32", "float program"))
                    if p in exported_ap)
    print(f"AP {line}")
    print(f"AP: {exported_ap.get('int8', qat_ap):.3f}")


if __name__ == "__main__":
    run_script(main)
