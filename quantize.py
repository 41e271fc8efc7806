"""
PACT quantization-aware training (QAT) of HRNet / Lite-HRNet, and an int8 export that Paddle Inference runs
as real int8 on CPU (oneDNN): the seed's LiteHRNet-30 69.4 -> 68.9 AP recipe, in plain Paddle.

    python quantize.py --weights runs/lite_hrnet_18/best.pdparams      # synthetic default: a short fine-tune
    python quantize.py --model lite_hrnet_30 --weights lite_hrnet_30.pdparams --data data/coco \
                       --input-size 256x192                            # the seed's recipe (50 epochs)
    python quantize.py --model lite_hrnet_18 --input-size 128x96 \
                       --qat-weights runs/lite_hrnet_18_qat/best.pdparams --export exported/lite18_int8

Every training flag of train.py works here too: the loop is train.py's, run on the fake-quantized model.
At the end the QAT weights are exported as an int8 inference model (--export) and scored again, now
running as int8 in Paddle Inference.
"""
import os
import sys
import warnings

if "--verbose" not in sys.argv:  # Paddle's C++ log lines (e.g. "PIR not support input out tensor"), read at import
    os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time note about C++ extensions

import argparse
import contextlib
import copy

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.base.layer_helper import LayerHelper
from paddle.base.proto import framework_pb2
from paddle.jit.dy2static import convert_call_func

import model as model_py
import train
from data import parse_input_size, run_script
from evaluate import evaluate_model
from export import create_predictor, staged_files, write_pose_json
from model import (QMAX, QuantConv2D, build_model, channel_abs_max, load_checkpoint, load_weights, prepare_qat,
                   quantized_inputs, replace_layers, set_device)

# ----------------------------------------------------------------------------------------------------
# int8 export. Paddle Inference's oneDNN int8 passes (Config.enable_mkldnn_int8) work on legacy programs
# (.pdmodel; PIR programs have no int8 CPU passes in Paddle 3.3.1) in Paddle's "ONNX format": every
# quantized input goes through quantize_linear -> dequantize_linear with its scale, every int8 weight
# through dequantize_linear with its per-channel scales. The passes read the scales, drop those ops and
# run the convolutions (with BatchNorm and activations fused in) on int8 data.

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


def _append_op(kind, inputs, attrs=None, output="Out"):
    """Append one op to the legacy program being traced, for the ops Paddle 3.3.1's Python API does not
    create there (see legacy_program_ops) or creates in a form the oneDNN passes do not recognise."""
    helper = LayerHelper(kind)
    out = helper.create_variable_for_type_inference("float32")
    helper.append_op(type=kind, inputs=inputs, outputs={output: [out]}, attrs=attrs or {})
    return out


def _quant_op(kind, x, scale, zero_point, axis):
    """quantize_linear / dequantize_linear (Paddle's Python API only creates them inside its own
    static-graph quantization passes); round_type 1 rounds ties away from 0, as paddle.round."""
    return _append_op(kind, {"X": [x], "Scale": [scale], "ZeroPoint": [zero_point]},
                      {"quant_axis": axis, "bit_length": 8, "qmin": -QMAX, "qmax": QMAX, "is_test": True,
                       "round_type": 1}, output="Y")


class Int8Conv2D(nn.Layer):
    """The exported form of a QuantConv2D, with the following BatchNorm (if any) folded in: int8 weight
    codes stored as int8 (a quarter of the float file), a float scale and bias per output channel, the
    input scale. Folding is exact for per-channel scales: BN multiplies channel c by k_c, which only
    rescales that channel's codes' scale (and flips their sign when k_c < 0).

    PACT is left out, as in the seed's export: the quantizer clips inputs to [-scale, scale] anyway, so
    clip(x, -alpha, alpha) before it changes nothing when scale <= alpha (export_int8 checks)."""

    def __init__(self, layer, bn, zero_point):
        super().__init__()
        weight = layer.weight.numpy().astype(np.float64)
        abs_max = channel_abs_max(layer.weight).numpy().reshape(-1).astype(np.float64)
        codes = np.round(np.clip(weight / abs_max[:, None, None, None], -1, 1) * QMAX)
        bias = np.zeros(len(abs_max)) if layer.bias is None else layer.bias.numpy().astype(np.float64)
        if bn is not None:
            k = bn.weight.numpy() / np.sqrt(bn._variance.numpy() + bn._epsilon)
            bias = (bias - bn._mean.numpy()) * k + bn.bias.numpy()
            codes, abs_max = codes * np.sign(k)[:, None, None, None], abs_max * np.abs(k)
        self.register_buffer("weight_int8", paddle.to_tensor(codes.astype(np.int8)))
        self.register_buffer("weight_scale", paddle.to_tensor(abs_max.astype(np.float32)))
        self.register_buffer("input_scale", layer.input_scale.clone())
        self.register_buffer("bias", paddle.to_tensor(bias.astype(np.float32)))
        self.register_buffer("zero_point", zero_point)  # one int32 zero shared by all: symmetric quantization
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups

    def forward(self, x):
        x = _quant_op("quantize_linear", x, self.input_scale, self.zero_point, -1)
        x = _quant_op("dequantize_linear", x, self.input_scale, self.zero_point, -1)
        weight = _quant_op("dequantize_linear", self.weight_int8, self.weight_scale, self.zero_point, 0)
        x = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)
        # the classic per-channel bias add (axis 1) that oneDNN fuses into the conv; F.conv2d's reshaped
        # bias is not recognised, leaving an extra op per conv and a 25 s graph optimisation
        return _append_op("elementwise_add", {"X": [x], "Y": [self.bias]}, {"axis": 1})


@contextlib.contextmanager
def layers_traced_as_written():
    """paddle.jit.to_static translates the source code of every layer instance it meets (700 translations
    for a Lite-HRNet: 80% of a 10 s PIR or 60 s legacy export). This project's forward code branches on
    Python values only, so tracing it as written records the same program. Undone on exit."""
    modules = [m for m in (model_py, sys.modules[__name__]) if m not in convert_call_func.BUILTIN_LIKELY_MODULES]
    paddle.jit.ignore_module(modules)
    try:
        yield
    finally:
        for m in modules:
            convert_call_func.BUILTIN_LIKELY_MODULES.remove(m)


@contextlib.contextmanager
def legacy_program_ops():
    """While a legacy program is traced, route three functions the networks use to ops that work there
    (restored on exit):

    - F.sigmoid and paddle.matmul: Paddle 3.3.1 binds them to PIR-only functions that reject a legacy
      program's Variables ("argument must be Value, but got Variable"); the classic ops are appended instead;
    - model.upsample_nearest: F.interpolate (nearest) instead of reshape + expand. Both are exact;
      model.py avoids interpolate because oneDNN cannot run it in PIR programs, but in legacy programs
      oneDNN runs it, and the expand ops cost 40% of the int8 run time."""
    originals = F.sigmoid, paddle.matmul, model_py.upsample_nearest

    def sigmoid(x, name=None):
        return _append_op("sigmoid", {"X": [x]})

    def matmul(x, y, transpose_x=False, transpose_y=False, name=None):
        return _append_op("matmul_v2", {"X": [x], "Y": [y]}, {"trans_x": transpose_x, "trans_y": transpose_y})

    def upsample_nearest(x, factor):
        return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="nearest")

    F.sigmoid, paddle.matmul, model_py.upsample_nearest = sigmoid, matmul, upsample_nearest
    try:
        yield
    finally:
        F.sigmoid, paddle.matmul, model_py.upsample_nearest = originals


def compact_program(path):
    """Shrink a saved legacy program in place without changing what it computes: drop the bookkeeping
    attributes no inference pass reads (the Python call stack alone is 9 KB per channel_shuffle op),
    empty optional input/output slots, and give the temporary variables short names (persistable
    variables keep theirs: the parameter file is matched to them by name). Halves a Lite-HRNet program."""
    with open(path, "rb") as f:
        program = framework_pb2.ProgramDesc.FromString(f.read())
    bookkeeping = {"op_callstack", "op_namescope", "op_role", "op_role_var", "op_device", "with_quant_attr"}
    for block in program.blocks:
        kept_names = {a for op in block.ops if op.type in ("feed", "fetch")
                      for slot in list(op.inputs) + list(op.outputs) for a in slot.arguments}
        short = {v.name: f"t{i}" for i, v in enumerate(block.vars) if not v.persistable and v.name not in kept_names}
        for var in block.vars:
            var.name = short.get(var.name, var.name)
        for op in block.ops:
            attrs = [a for a in op.attrs if a.name not in bookkeeping]
            del op.attrs[:]
            op.attrs.extend(attrs)
            for slots in (op.inputs, op.outputs):
                used = [slot for slot in slots if slot.arguments]
                for slot in used:
                    names = [short.get(a, a) for a in slot.arguments]
                    del slot.arguments[:]
                    slot.arguments.extend(names)
                del slots[:]
                slots.extend(used)
    with open(path + ".tmp", "wb") as f:
        f.write(program.SerializeToString())
    os.replace(path + ".tmp", path)


def export_int8(model, out_dir, model_name, input_size, info, udp=False):
    """Write out_dir/model.pdmodel + model.pdiparams (the int8 program) and pose.json for a trained QAT model
    (left unchanged). input_size = (width, height). Returns {"files": {name: bytes}, "folded_bn": count}."""
    over = {name: s / a - 1 for name, (s, a) in quantized_inputs(model).items() if a is not None and s > a}
    if over:
        name = max(over, key=over.get)
        print(f"warning: {len(over)} quantized inputs have a scale above their PACT alpha (at most {over[name]:.2%}, "
              f"{name}); the int8 model clips them at the scale, the QAT model at alpha")
    twin = copy.deepcopy(model)
    twin.eval()
    pairs = conv_bn_pairs(twin, input_size)
    layers = dict(twin.named_sublayers())
    zero = paddle.zeros([1], "int32")
    replace_layers(twin, QuantConv2D, lambda layer, name: Int8Conv2D(layer, layers.get(pairs.get(name)), zero))
    folded = set(pairs.values())
    replace_layers(twin, nn.BatchNorm2D, lambda bn, name: nn.Identity() if name in folded else bn)
    spec = [paddle.static.InputSpec([None, 3, input_size[1], input_size[0]], "float32", "image")]
    # model.pdiparams.info, which only paddle.jit.load reads, is left behind in the staging folder
    with staged_files(out_dir, ("model.pdmodel", "model.pdiparams", "pose.json")) as staging:
        prefix = os.path.join(staging, "model")
        with paddle.pir_utils.OldIrGuard(), legacy_program_ops(), layers_traced_as_written():
            paddle.jit.save(paddle.jit.to_static(twin, input_spec=spec, full_graph=True), prefix)
        compact_program(prefix + ".pdmodel")
        write_pose_json(staging, model_name, input_size, info, udp, quantized=True,
                        model_file="model.pdmodel", params_file="model.pdiparams")
    files = {f: os.path.getsize(os.path.join(out_dir, f)) for f in ("model.pdmodel", "model.pdiparams")}
    return {"files": files, "folded_bn": len(folded)}


class PredictorModel(nn.Layer):
    """An exported model's predictor (export.create_predictor) behind the nn.Layer interface that
    evaluate.evaluate_model calls."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def forward(self, images):
        return paddle.to_tensor(self.run(images.numpy()))


# ----------------------------------------------------------------------------------------------------
# command line

QAT_RECIPES = {
    # the seed's PACT run (lite_hrnet_30_256x192_coco_pact.yml): 50 epochs from the float weights, Adam 1e-3,
    # x0.1 at epochs 40 and 45, 500 warmup steps; the rest (batch, loss, model) as the float recipe
    family: dict(train.RECIPES[family], epochs=50, milestones=[40, 45], lr=1e-3, warmup_steps=500)
    for family in ("hrnet", "lite_hrnet")}
# on the synthetic set (after `python train.py`): one epoch at the float run's final learning rate
QAT_RECIPES["synthetic"] = dict(train.RECIPES["synthetic"], epochs=1, milestones=[], lr=4e-4, warmup_steps=20,
                                eval_every=1)


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
    p.add_argument("--eval-int8", action=argparse.BooleanOptionalAction, default=True,
                   help="score the exported int8 model on val (Paddle Inference, oneDNN int8 on CPU)")
    return p


def load_qat_model(path, model_name=None, info=None):
    """A QAT checkpoint of this script (best/last.pdparams) -> the quantization-aware model it holds."""
    model, record = load_checkpoint(path, model_name, info=info, flag="--qat-weights")
    if not record["qat"]:
        raise ValueError(f"{path}: no quantizer scales in it, not a QAT checkpoint (float weights go to --weights)")
    return model


def main(argv=None):
    args = build_parser().parse_args(argv)
    args = train.apply_recipe(args, QAT_RECIPES, weights=args.qat_weights or args.weights)
    export_dir = args.export or os.path.join(args.out, "int8")
    if not (args.weights or args.qat_weights or args.resume):
        raise SystemExit("error: --weights FLOAT_CHECKPOINT is needed (the trained float model to fine-tune, e.g. "
                         "runs/lite_hrnet_18/best.pdparams after `python train.py`), or --qat-weights / --resume")
    try:
        set_device(args.device)
        datasets = train.build_datasets(args)
        val_set = datasets[1]
        num_joints = val_set.info.num_joints
        float_ap, qat_ap = None, -1.0
        if args.qat_weights:
            model = load_qat_model(args.qat_weights, args.model, val_set.info)
        else:
            model = build_model(args.model, num_joints)
            if args.weights and not args.resume:
                load_weights(model, args.weights)
                _, stats = evaluate_model(model, val_set, args.batch_size, args.flip, num_workers=args.workers)
                float_ap = stats["AP"]
                print(f"float model {args.weights}: AP {float_ap:.3f}")
            prepare_qat(model, args.pact, args.pact_init, args.pact_lr, args.moving_rate)
            _, _, qat_ap = train.train(args, model=model, datasets=datasets)
            model = load_qat_model(os.path.join(args.out, "best.pdparams"))
        if qat_ap < 0:  # not trained here, or trained without an evaluation
            _, stats = evaluate_model(model, val_set, args.batch_size, args.flip, num_workers=args.workers)
            qat_ap = stats["AP"]
        alphas = [a for _, a in quantized_inputs(model).values() if a is not None]
        if alphas:
            print(f"PACT alphas: min {min(alphas):.3g}, median {float(np.median(alphas)):.3g}, max {max(alphas):.3g}")
        size = parse_input_size(args.input_size)
        result = export_int8(model, export_dir, args.model, size, val_set.info, args.udp)
        print(f"int8 model: {export_dir} ({', '.join(f'{k} {v / 1e6:.2f} MB' for k, v in result['files'].items())}; "
              f"{result['folded_bn']} BatchNorms folded)")
        int8_ap = None
        if args.eval_int8:
            int8 = PredictorModel(create_predictor(export_dir, "cpu", int8=True))  # oneDNN int8 is a CPU engine
            _, stats = evaluate_model(int8, val_set, args.batch_size, args.flip, num_workers=args.workers)
            int8_ap = stats["AP"]
    except (ValueError, OSError) as err:
        raise SystemExit("error: " + " ".join(str(err).split()))
    line = "" if float_ap is None else f"float {float_ap:.3f}  "
    print(f"AP {line}QAT (fake-quant) {qat_ap:.3f}" + ("" if int8_ap is None else f"  int8 {int8_ap:.3f}"))
    print(f"AP: {qat_ap if int8_ap is None else int8_ap:.3f}")


if __name__ == "__main__":
    run_script(main)
