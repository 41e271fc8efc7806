"""
Export a trained HRNet / Lite-HRNet for inference, and run an export with paddle.inference, OpenVINO or onnxruntime.

The export is the network alone, for any batch size: float32 N x 3 x H x W crops in, N x K x H/4 x W/4 heatmaps
out, written twice: model.json (Paddle's PIR format, for paddle.inference on CPU or GPU) and legacy.pdmodel
(Paddle's older format, the one OpenVINO reads; on CPU OpenVINO runs these networks 1.2-4x as fast); with --onnx
a third time, as model.onnx (converted from legacy.pdmodel, for onnxruntime and whatever else reads ONNX).
Everything around the network (box -> crop, normalisation, decoding, flip pairs, drawing) is described in
a small pose.json written beside it, so predict.py can run an export without the Python model code or a checkpoint.

    python export.py --model hrnet_w32 --weights hrnet_w32.pdparams --out export/hrnet_w32
    python export.py --model lite_hrnet_30 --weights lite30.pdparams --input-size 256x192 --out export/lite30 --onnx

After writing, every runtime the export is for (onnxruntime too, with --onnx) is compared with eager mode on a
random batch (and OpenVINO's bf16 by the keypoints it finds on real crops, where the CPU has bf16); a disagreement
is an error.
"""
import os
import sys
import warnings

if "--verbose" not in sys.argv:  # Paddle's C++ log lines (e.g. "PIR not support input out tensor"), read at import
    os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time note about C++ extensions

import argparse
import contextlib
import ctypes
import importlib
import io
import json
import platform
import re
import shutil
import subprocess
import tempfile
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import inference
from paddle.base.layer_helper import LayerHelper
from paddle.base.layers import math_op_patch
from paddle.base.proto import framework_pb2
from paddle.jit.dy2static import convert_call_func
from paddle.static import InputSpec

import model as model_py
from data import (HEATMAP_STRIDE, IMAGENET_MEAN, IMAGENET_STD, COCOKeypointDataset, HelpFormatter,
                  keypoint_info_from_record, parse_input_size, run_script, size_wh, write_json_atomically)
from model import add_checkpoint_flags, decoding_of, load_checkpoint, set_device

POSE_FILE = "pose.json"
POSE_KEYS = ("model", "input_size", "heatmap_size", "mean", "std", "color", "keypoint_names", "flip_pairs",
             "skeleton", "sigmas", "udp", "quantized", "model_file", "params_file")
# the same network in the legacy program format, for OpenVINO (null when not written; absent in older exports)
LEGACY_KEYS = ("legacy_model_file", "legacy_params_file")
# how to decode the heatmaps, as the checkpoint's record says (absent in older exports: model.decoding_of)
DECODE_KEYS = ("decode", "dark_kernel")
LEGACY_FILES = ("legacy.pdmodel", "legacy.pdiparams")
# a quantized export's float program (quantize.py: the same folded weights in float, a legacy program); present
# only in quantized exports that carry one
FLOAT_KEYS = ("float_model_file", "float_params_file")
ONNX_KEY = "onnx_file"  # the ONNX program (null when not written; absent in older exports)
ONNX_FILE = "model.onnx"  # the export's network; in a quantized export the int8 program, as QDQ
FLOAT_ONNX_FILE = "float.onnx"  # a quantized export's float program


# ----------------------------------------------------------------------------------------------------
# pose.json: what a predictor needs besides the network


def pose_metadata(model_name, input_size, info, udp=False, quantized=False, model_file="model.json",
                  params_file="model.pdiparams", legacy_files=(None, None), float_files=None, onnx_file=None,
                  decoding=("default", 3)):
    """The content of pose.json: model, input_size [H, W], heatmap_size [h, w], mean and std (RGB, on 0..1
    pixels), color, keypoint_names, flip_pairs, skeleton (0-based pairs), sigmas (OKS), udp, quantized, decode and
    dark_kernel (how its heatmaps are decoded), model_file and params_file (the PIR program), legacy_model_file and
    legacy_params_file (the legacy program, null without one), onnx_file (null without one), and in a quantized
    export with a float program float_model_file and float_params_file.
    input_size: (width, height) or 'HxW'; info: data.KeypointInfo; float_files: (program, params) of a quantized
    export's float program; onnx_file: the name of the ONNX program beside it (export_onnx: model.onnx, or
    float.onnx when it is a quantized export's float program); decoding: (decode, dark_kernel) of the checkpoint's
    record (model.decoding_of). Readers take pose.json files without onnx_file or decode (older exports) as having
    none and the official decoding."""
    width, height = size_wh(input_size)
    return {
        "model": model_name,
        "input_size": [height, width],
        "heatmap_size": [height // HEATMAP_STRIDE, width // HEATMAP_STRIDE],
        "mean": [round(float(v), 6) for v in IMAGENET_MEAN],  # RGB, on images scaled to 0..1
        "std": [round(float(v), 6) for v in IMAGENET_STD],
        "color": "RGB",
        "keypoint_names": list(info.names),
        "flip_pairs": [[int(a), int(b)] for a, b in info.flip_pairs],
        "skeleton": [[int(a), int(b)] for a, b in info.skeleton],  # 0-based
        "sigmas": [round(float(s), 6) for s in info.sigmas],
        "udp": bool(udp),
        "decode": decoding[0],
        "dark_kernel": int(decoding[1]),
        "quantized": bool(quantized),
        "model_file": model_file,
        "params_file": params_file,
        **dict(zip(LEGACY_KEYS, legacy_files)),
        **({} if float_files is None else dict(zip(FLOAT_KEYS, float_files))),
        ONNX_KEY: onnx_file,
    }


def write_pose_json(out_dir, model_name, input_size, info, udp=False, quantized=False, model_file="model.json",
                    params_file="model.pdiparams", legacy_files=(None, None), float_files=None,
                    decoding=("default", 3)):
    path = os.path.join(out_dir, POSE_FILE)
    write_json_atomically(pose_metadata(model_name, input_size, info, udp, quantized, model_file, params_file,
                                        legacy_files, float_files, decoding=decoding), path)
    return path


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _pairs(value):
    return isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and all(map(_is_int, p)) for p in value)


# what each pose.json value must be: (test, description for the error message)
POSE_TYPES = {
    "model": (lambda v: isinstance(v, str), "a model name"),
    "input_size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v),
                   "[height, width], two positive integers"),
    "heatmap_size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v),
                     "[height, width], two positive integers"),
    "mean": (lambda v: isinstance(v, list) and len(v) == 3 and all(map(_is_number, v)), "3 numbers"),
    "std": (lambda v: isinstance(v, list) and len(v) == 3 and all(_is_number(x) and x > 0 for x in v),
            "3 positive numbers"),
    "color": (lambda v: isinstance(v, str), "a channel order such as 'RGB'"),
    "keypoint_names": (lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) for x in v),
                       "a list of names"),
    "flip_pairs": (_pairs, "a list of [left, right] index pairs"),
    "skeleton": (_pairs, "a list of [a, b] index pairs"),
    "sigmas": (lambda v: isinstance(v, list) and all(_is_number(x) and x > 0 for x in v), "a list of positive numbers"),
    "udp": (lambda v: isinstance(v, bool), "true or false"),
    "decode": (lambda v: v in ("default", "dark"), "'default' or 'dark'"),
    "dark_kernel": (lambda v: _is_int(v) and v > 0 and v % 2 == 1, "a positive odd integer"),
    "quantized": (lambda v: isinstance(v, bool), "true or false"),
    "model_file": (lambda v: isinstance(v, str), "a file name"),
    "params_file": (lambda v: isinstance(v, str), "a file name"),
}


def read_pose_json(model_dir):
    """pose.json of an exported folder as a dict; FileNotFoundError / ValueError with a one-line message."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"exported model folder {model_dir} not found")
    path = os.path.join(model_dir, POSE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir} has no {POSE_FILE}: not a folder written by export.py")
    try:
        with open(path, encoding="utf-8") as f:
            pose = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    missing = [key for key in POSE_KEYS if not isinstance(pose, dict) or key not in pose]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: write it with export.py")
    for key, (valid, expected) in POSE_TYPES.items():
        if key in pose and not valid(pose[key]):
            raise ValueError(f"{path}: {key} is {json.dumps(pose[key])[:60]}, expected {expected}")
    num_joints = len(pose["keypoint_names"])
    if (len(pose["input_size"]) != 2 or len(pose["heatmap_size"]) != 2 or len(pose["sigmas"]) != num_joints
            or any(not 0 <= i < num_joints for pair in pose["flip_pairs"] + pose["skeleton"] for i in pair)):
        raise ValueError(f"{path}: inconsistent sizes, sigmas or keypoint indices for {num_joints} keypoints")
    return pose


# ----------------------------------------------------------------------------------------------------
# PIR export


def export_model(model, out_dir, model_name, input_size, info, udp=False, legacy=True, decoding=("default", 3)):
    """jit.save the model for crops of input_size ((width, height) or 'HxW') and any batch size, plus pose.json
    (decoding: see pose_metadata); with legacy, the same network in the legacy format too (legacy.pdmodel +
    legacy.pdiparams, for OpenVINO).
    The model is traced in eval mode and handed back in its own mode, still eager. Returns the written files."""
    width, height = size_wh(input_size)
    names = ("model.json", "model.pdiparams") + (LEGACY_FILES if legacy else ())  # model.*: the PIR format
    with staged_files(out_dir, names) as staging:
        with traced_in_eval_mode(model), layers_traced_as_written():
            static = paddle.jit.to_static(model, input_spec=[InputSpec([None, 3, height, width], "float32", "image")],
                                          full_graph=True)
            paddle.jit.save(static, os.path.join(staging, "model"))
        if legacy:
            with traced_in_eval_mode(model):
                save_legacy_program(model, os.path.join(staging, "legacy"), (width, height))
    pose_file = write_pose_json(out_dir, model_name, (width, height), info, udp,
                                legacy_files=LEGACY_FILES if legacy else (None, None), decoding=decoding)
    return [os.path.join(out_dir, name) for name in names] + [pose_file]


@contextlib.contextmanager
def traced_in_eval_mode(model):
    """The model in eval mode, for paddle.jit.to_static; afterwards in its own mode again and eager: to_static
    replaces forward on the very layer it is given."""
    was_training, eager_forward = model.training, model.__dict__.get("forward")
    model.eval()
    try:
        yield model
    finally:
        if eager_forward is None:
            model.__dict__.pop("forward", None)
        else:
            model.forward = eager_forward
        model.train(was_training)


@contextlib.contextmanager
def staged_files(out_dir, names):
    """A scratch folder inside out_dir to write an export into; on success the named files move into out_dir,
    so they appear there only complete (an interrupted export leaves the previous ones). Removed either way."""
    staging = os.path.join(out_dir, f".staging{os.getpid()}")
    os.makedirs(staging, exist_ok=True)
    try:
        yield staging
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# Legacy-format export. OpenVINO reads Paddle's legacy programs (.pdmodel) only, and paddle.inference's oneDNN
# int8 passes work on them only (quantize.py): both trace the network again with these helpers.


def append_op(kind, inputs, attrs=None, output="Out"):
    """Append one op to the legacy program being traced, for the ops Paddle 3.3.1's Python API does not
    create there (see legacy_program_ops) or creates in a form the oneDNN passes do not recognise."""
    helper = LayerHelper(kind)
    out = helper.create_variable_for_type_inference("float32")
    helper.append_op(type=kind, inputs=inputs, outputs={output: [out]}, attrs=attrs or {})
    return out


@contextlib.contextmanager
def layers_traced_as_written(*modules):
    """paddle.jit.to_static translates the source code of every layer instance it meets (700 translations
    for a Lite-HRNet: 80% of a 10 s PIR or 60 s legacy export). This project's forward code branches on
    Python values only, so tracing it as written records the same program. modules: more modules whose layers
    are traced so (model.py's always are). Undone on exit."""
    modules = [m for m in (model_py, *modules) if m not in convert_call_func.BUILTIN_LIKELY_MODULES]
    paddle.jit.ignore_module(modules)
    try:
        yield
    finally:
        for m in modules:
            convert_call_func.BUILTIN_LIKELY_MODULES.remove(m)


@contextlib.contextmanager
def no_call_stack_per_operator():
    """Paddle 3.3.1's legacy-program `+`, `*`, ... between two tensors with a batch dimension read the whole
    Python call stack and its source files (inspect.stack) for a deprecation warning that is filtered anyway:
    a quarter of a Lite-HRNet int8 export's time. While a program is traced the warning names no location."""
    original = math_op_patch.inspect
    math_op_patch.inspect = types.SimpleNamespace(stack=lambda: [None, (None, "<traced program>", 0)])
    try:
        yield
    finally:
        math_op_patch.inspect = original


@contextlib.contextmanager
def legacy_program_ops():
    """While a legacy program is traced, route five functions the networks use to ops that work there
    (restored on exit):

    - F.sigmoid and paddle.matmul: Paddle 3.3.1 binds them to PIR-only functions that reject a legacy
      program's Variables ("argument must be Value, but got Variable"); the classic ops are appended instead;
    - model.upsample_nearest: F.interpolate (nearest) instead of reshape + expand. Both are exact;
      model.py avoids interpolate because oneDNN cannot run it in PIR programs, but in legacy programs
      oneDNN runs it, and the expand ops cost 40% of the int8 run time. Given the output size rather than
      the factor: OpenVINO's reader then computes no shapes at run time (Lite-HRNet: 1.1x, README Speed);
    - F.channel_shuffle (Lite-HRNet): reshape -> transpose -> reshape, the same function in ops OpenVINO
      knows (its Paddle reader has no channel_shuffle);
    - F.adaptive_avg_pool2d to a size that divides the input (Lite-HRNet's cross-resolution weighting) as
      plain average pooling: the same numbers, where OpenVINO has only a slow generic adaptive kernel."""
    originals = F.sigmoid, paddle.matmul, model_py.upsample_nearest, F.channel_shuffle, F.adaptive_avg_pool2d
    adaptive_avg_pool2d_of_paddle = F.adaptive_avg_pool2d

    def sigmoid(x, name=None):
        return append_op("sigmoid", {"X": [x]})

    def matmul(x, y, transpose_x=False, transpose_y=False, name=None):
        return append_op("matmul_v2", {"X": [x], "Y": [y]}, {"trans_x": transpose_x, "trans_y": transpose_y})

    def upsample_nearest(x, factor):
        if factor == 1:
            return x
        _, _, height, width = x.shape  # numbers here: the export's crops have one size
        return F.interpolate(x, size=[height * factor, width * factor], mode="nearest")

    def channel_shuffle(x, groups, data_format="NCHW", name=None):
        _, c, h, w = x.shape
        x = paddle.transpose(x.reshape([-1, groups, c // groups, h, w]), [0, 2, 1, 3, 4])
        return x.reshape([-1, c, h, w])

    def adaptive_avg_pool2d(x, output_size, data_format="NCHW", name=None):
        if output_size == 1:
            return adaptive_avg_pool2d_of_paddle(x, output_size)  # global: OpenVINO's fast ReduceMean
        (height, width), (out_h, out_w) = x.shape[2:], output_size  # whole multiples: input sizes are 32k
        return F.avg_pool2d(x, (height // out_h, width // out_w), stride=(height // out_h, width // out_w))

    (F.sigmoid, paddle.matmul, model_py.upsample_nearest, F.channel_shuffle,
     F.adaptive_avg_pool2d) = sigmoid, matmul, upsample_nearest, channel_shuffle, adaptive_avg_pool2d
    try:
        yield
    finally:
        F.sigmoid, paddle.matmul, model_py.upsample_nearest, F.channel_shuffle, F.adaptive_avg_pool2d = originals


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


def save_legacy_program(model, prefix, input_size, modules=()):
    """prefix.pdmodel + prefix.pdiparams: the model (in eval mode; to_static replaces its forward) as a legacy
    program for crops of input_size = (width, height) and any batch size. modules: see layers_traced_as_written.
    paddle.jit.save's prefix.pdiparams.info, which only paddle.jit.load reads, is written too."""
    spec = [InputSpec([None, 3, input_size[1], input_size[0]], "float32", "image")]
    with paddle.pir_utils.OldIrGuard(), legacy_program_ops(), no_call_stack_per_operator(), \
            layers_traced_as_written(*modules):
        paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), prefix)
    compact_program(prefix + ".pdmodel")


# ----------------------------------------------------------------------------------------------------
# Predictors: an export's network as a function of a batch of crops, on paddle.inference, OpenVINO or onnxruntime

BACKENDS = ("auto", "paddle", "openvino", "onnxruntime")
RUNTIME_NAMES = {"paddle": "paddle.inference", "openvino": "OpenVINO", "onnxruntime": "onnxruntime"}
PRECISIONS = ("fp32", "bf16", "int8")
OPENVINO_MAX_BATCH = 8  # OpenVINO runs larger batches in chunks of this many crops


@dataclass
class Predictor:
    """An export's network: float32 N x 3 x H x W numpy crops -> N x K x h x w numpy heatmaps, on backend
    ('paddle', 'openvino' or 'onnxruntime') at precision ('auto': a quantized export's int8 or float program,
    whichever ran faster, chosen per batch size: chosen maps batch sizes to 'int8' / 'fp32'); engine: the
    paddle.inference predictor, OpenVINO's network compiled for batch 1 (of the program chosen at batch 1), or
    the onnxruntime session."""
    run: Callable
    backend: str
    precision: str
    engine: Any
    chosen: dict = field(default_factory=dict)

    def __call__(self, batch):
        return self.run(np.ascontiguousarray(batch, dtype=np.float32))

    def describe(self):
        runtime = RUNTIME_NAMES[self.backend]
        if self.precision != "auto":
            return f"{runtime} {self.precision}"
        return f"{runtime} auto: " + ", ".join(f"{p} at batch {b}" for b, p in sorted(self.chosen.items()))


def compiled_batch_size(crops):
    """The batch size an OpenVINO network is compiled for that runs the next of `crops` crops: the largest power
    of 2 <= crops, at most OPENVINO_MAX_BATCH (at most four compiles, 1-3 s each, once)."""
    return min(OPENVINO_MAX_BATCH, 1 << max(crops.bit_length() - 1, 0))


def log_to_stderr(line):
    print(line, file=sys.stderr)


def import_openvino():
    """The openvino module, or None when it is not installed (everything then runs on paddle.inference)."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino


def import_onnx_package(name, what):
    """paddle2onnx or onnxruntime, optional packages imported only when `what` (a flag) asks for them;
    ValueError '<what> needs <name>: pip install <name>' when missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ValueError(f"{what} needs {name}: pip install {name}") from None


def _model_files(model_dir, legacy=False, float_program=False):
    """(program, params) of an export: the ones pose.json names (its legacy-format pair with legacy, a quantized
    export's float program with float_program), else model.json (PIR) or model.pdmodel (legacy)."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"exported model folder {model_dir} not found")
    if os.path.isfile(os.path.join(model_dir, POSE_FILE)):
        pose = read_pose_json(model_dir)
        keys = FLOAT_KEYS if float_program else LEGACY_KEYS if legacy else ("model_file", "params_file")
        candidates = [tuple(pose.get(key) for key in keys)]
        if None in candidates[0]:
            raise FileNotFoundError(f"{model_dir} has no float program: export it again with this quantize.py"
                                    if float_program else f"{model_dir} has no legacy-format program, the one "
                                    f"OpenVINO reads: export it again with this export.py, or use --backend paddle")
    else:
        candidates = ([] if legacy else [("model.json", "model.pdiparams")]) + [("model.pdmodel", "model.pdiparams")]
    for program, params in candidates:
        if os.path.isfile(os.path.join(model_dir, program)) and os.path.isfile(os.path.join(model_dir, params)):
            return os.path.join(model_dir, program), os.path.join(model_dir, params)
    names = " or ".join(f"{program} + {params}" for program, params in candidates)
    raise FileNotFoundError(f"{model_dir}: no {names} (write an export with export.py)")


@contextlib.contextmanager
def native_output_held(verbose=False):
    """Paddle Inference's C++ code prints straight to the process's stdout and stderr: its oneDNN int8 passes
    30-40 lines with colour codes, a first run's kernel choice debug lines ('ReduceMeanCheckIfOneDNNSupport').
    Hold them back; with verbose they follow on stderr, so stdout carries only our output either way."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 1)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if verbose:
                held.seek(0)
                os.write(2, held.read())


def add_runtime_flags(parser):
    """--backend, --precision and --threads: how --model-dir runs (evaluate.py, predict.py)."""
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="runtime of --model-dir: auto = OpenVINO on CPU if installed, else paddle.inference; "
                             "onnxruntime runs its ONNX program (export.py --onnx)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="of --model-dir (default: fp32; a quantized export: int8, or with a float program "
                             "(quantize.py's default) whichever of the two runs faster here; bf16 needs "
                             "OpenVINO)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of --model-dir's runtime (default: all)")


def create_predictor(model_dir, backend="auto", device=None, threads=None, precision=None, onednn=True,
                     verbose=False, log=None):
    """A Predictor of an export: float32 N x 3 x H x W numpy -> N x K x h x w numpy heatmaps.

    backend: 'paddle' (paddle.inference), 'openvino' (CPU only; reads the legacy-format program), 'onnxruntime'
    (the ONNX program pose.json names, at its own precision) or 'auto': OpenVINO on CPU when it is installed and
    can run the export at that precision, paddle.inference otherwise.
    device: 'cpu', 'gpu' or 'gpu:N' (default: the GPU when Paddle has CUDA); threads: CPU threads (default:
    all cores); precision: 'fp32', 'bf16' (OpenVINO, on a CPU with bf16 instructions) or 'int8' (a quantized
    export, quantize.py). A quantized export runs 'int8' as int8 and 'fp32' / 'bf16' with its float program (older
    exports without one: on paddle.inference, the int8 program's fake quantization in float). Default: 'fp32'
    for a float export; for a quantized export on CPU that carries a float program, whichever of the two runs
    faster on this machine (auto_precision: int8 only where it is clearly faster), else 'int8' (unless oneDNN
    is off). onednn: paddle.inference's oneDNN kernels on CPU; verbose: show what Paddle's passes print while
    they build it; log: where the auto choice is reported (default: a line on stderr). With a pose.json beside
    the model, one warm-up run checks that the network takes the input size it states and gives the heatmaps
    it states."""
    log = log or log_to_stderr
    pose = read_pose_json(model_dir) if os.path.isfile(os.path.join(model_dir, POSE_FILE)) else None
    quantized = bool(pose and pose["quantized"])
    float_program = quantized and None not in (pose.get(key) for key in FLOAT_KEYS)
    onnx_precision = "int8" if quantized and pose.get(ONNX_KEY) == ONNX_FILE else "fp32"
    device = device or ("gpu" if paddle.is_compiled_with_cuda() else "cpu")
    if precision is None:
        precision = (onnx_precision if backend == "onnxruntime" else
                     "auto" if float_program and device == "cpu" else
                     "int8" if quantized and onednn else "fp32")
    elif precision not in PRECISIONS:
        raise ValueError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not quantized:
        raise ValueError(f"--precision int8: {model_dir} is a float export; int8 needs a quantized one "
                         f"(quantize.py --export)")
    if backend == "auto":  # a quantized export without a float program runs in float on paddle.inference only
        has_legacy = pose is not None and None not in (pose.get(key) for key in LEGACY_KEYS)
        openvino_can = device == "cpu" and (float_program if precision in ("fp32", "bf16") and quantized else
                                            has_legacy)
        backend = "openvino" if openvino_can and import_openvino() else "paddle"
    if backend not in RUNTIME_NAMES:
        raise ValueError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and precision != onnx_precision:
        raise ValueError(f"--precision {precision}: the ONNX program of {model_dir} runs in {onnx_precision}")
    if backend == "openvino" and device != "cpu":
        raise ValueError(f"--backend openvino runs on the CPU, not --device {device}")
    if precision == "auto" and backend == "paddle" and not onednn:
        precision = "fp32"  # paddle.inference's int8 kernels are oneDNN's

    def build(precision):  # a quantized export: int8 runs its int8 program, fp32 / bf16 its float program
        use_float_program = float_program and precision != "int8"
        if backend == "onnxruntime":
            return onnxruntime_predictor(_onnx_file(model_dir, pose), device, threads, precision)
        if backend == "openvino":
            program, _ = _model_files(model_dir, legacy=True, float_program=use_float_program)
            return openvino_predictor(program, threads, precision, quantized and not use_float_program, log)
        with native_output_held(verbose):
            return paddle_predictor(_model_files(model_dir, float_program=use_float_program), device, threads,
                                    onednn, precision)

    if precision == "auto":
        predictor = auto_precision(build, model_dir, backend, threads, pose["input_size"], log)
    else:
        predictor = build(precision)
    if pose is not None:
        with native_output_held(verbose):
            _check_against_pose_json(predictor, model_dir, pose)
    return predictor


# ----------------------------------------------------------------------------------------------------
# A quantized export's int8 or float program, whichever is faster here. int8 pays where dense convolutions
# dominate (HRNet-W32: ~3x); Lite-HRNet's time is in ~1,000 small depthwise, shuffle and pooling ops, where the
# quantize / dequantize steps only add work and int8 ran 0.89-1.12x as fast as float. Which one wins depends on
# the network, the batch size, the threads and the CPU, so it is measured where it runs, once.

AUTO_CACHE_FILE = "auto_precision.json"
# int8 only when clearly faster: a brief timing on shared cores scatters by a few percent, and the float
# program is the one that can never be slower than the float export
AUTO_MIN_GAIN = 1.03


def choose_precision(int8_seconds, float_seconds, min_gain=AUTO_MIN_GAIN):
    """('int8' or 'fp32', int8's speed as a multiple of float's) from interleaved timings of both programs:
    the ratio of the medians; int8 when it reaches min_gain."""
    ratio = float(np.median(float_seconds) / np.median(int8_seconds))
    return ("int8" if ratio >= min_gain else "fp32"), ratio


def time_interleaved(runs, batch, warmup=2, min_rounds=7, max_rounds=30, budget=1.5):
    """{name: [seconds per call]} of each run(batch) of runs ({name: callable}), called in turn, in alternating
    order, so that load changes on a shared CPU hit all alike; warm-up rounds (compilation, caches) not kept.
    At least min_rounds, then more until budget seconds have passed, at most max_rounds."""
    times = {name: [] for name in runs}
    names = list(runs)
    started = None
    for i in range(warmup + max_rounds):
        if i == warmup:
            started = time.perf_counter()
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runs[name](batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
        if i + 1 >= warmup + min_rounds and time.perf_counter() - started > budget:
            break
    return times


def machine_key(backend, threads):
    """What the choice depends on besides the export and the batch size: this machine (host name, CPU model,
    core count), the runtime and its version, the threads."""
    cpu = cpuinfo_field("model name") or platform.processor() or platform.machine()
    runtime = f"openvino {import_openvino().__version__}" if backend == "openvino" else f"paddle {paddle.__version__}"
    return f"{platform.node()} | {cpu} | {os.cpu_count()} cpus | {runtime} | {threads} threads"


def _programs_fingerprint(model_dir):
    """Names, sizes and modification times of the export's program files: a new export invalidates the cache."""
    pose = read_pose_json(model_dir)
    names = sorted({pose[key] for key in ("model_file", "params_file") + FLOAT_KEYS if pose.get(key)})
    stats = [os.stat(os.path.join(model_dir, name)) for name in names]
    return [[name, st.st_size, st.st_mtime_ns] for name, st in zip(names, stats)]


def cached_choice(model_dir, machine, batch):
    """The choice remembered in model_dir/auto_precision.json for this machine key and batch size, or None (none
    yet, another export since, unreadable)."""
    try:
        with open(os.path.join(model_dir, AUTO_CACHE_FILE), encoding="utf-8") as f:
            cache = json.load(f)
        if cache["programs"] != _programs_fingerprint(model_dir):
            return None
        choice = cache["choices"][machine][str(batch)]
        return choice if choice["precision"] in ("int8", "fp32") and _is_number(choice["int8_vs_float"]) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_choice(model_dir, machine, batch, choice):
    """Add a choice to model_dir/auto_precision.json (dropping those of older programs); False when the folder
    is not writable (the choice then holds for this process only)."""
    path = os.path.join(model_dir, AUTO_CACHE_FILE)
    fingerprint = _programs_fingerprint(model_dir)
    try:
        with open(path, encoding="utf-8") as f:
            cache = json.load(f)
        if (not isinstance(cache, dict) or cache.get("programs") != fingerprint
                or not isinstance(cache.get("choices"), dict)):
            raise ValueError
    except (OSError, ValueError):
        cache = {"programs": fingerprint, "choices": {}}
    cache["choices"].setdefault(machine, {})[str(batch)] = choice
    try:
        write_json_atomically(cache, path)
    except OSError:
        return False
    return True


def auto_precision(build, model_dir, backend, threads, input_size, log):
    """A Predictor running a quantized export's int8 or float program (build(precision) -> Predictor), whichever
    runs faster at each batch size (1, 2, 4, 8: OpenVINO's compiled sizes; larger batches as 8). The first batch
    of a size times both programs on random crops (time_interleaved, choose_precision) and remembers the choice
    in the export folder per machine_key; later runs read it. Batch 1 is chosen here. One line per choice."""
    threads = int(threads or os.cpu_count() or 1)
    machine = machine_key(backend, threads)
    built, chosen = {}, {}

    def program(precision):
        if precision not in built:
            built[precision] = build(precision)
        return built[precision]

    def choose(size):
        choice = cached_choice(model_dir, machine, size)
        where = f"(cached in {os.path.join(model_dir, AUTO_CACHE_FILE)})"
        if choice is None:
            crops = np.random.RandomState(size).randn(size, 3, *input_size).astype(np.float32)
            times = time_interleaved({"int8": program("int8"), "fp32": program("fp32")}, crops)
            precision, ratio = choose_precision(times["int8"], times["fp32"])
            choice = {"precision": precision, "int8_vs_float": round(ratio, 3), "rounds": len(times["int8"]),
                      "int8_ms": round(1000 * float(np.median(times["int8"])), 3),
                      "float_ms": round(1000 * float(np.median(times["fp32"])), 3)}
            where = (f"(measured, {choice['rounds']} interleaved rounds; remembered in the export folder)"
                     if remember_choice(model_dir, machine, size, choice) else
                     f"(measured, {choice['rounds']} interleaved rounds; not remembered: {model_dir} is read-only)")
        chosen[size] = choice["precision"]
        log(f"auto: int8 runs {choice['int8_vs_float']:.2f}x as fast as float on this machine at batch {size}, "
            f"{threads} threads: running {'int8' if chosen[size] == 'int8' else 'the float program'} {where}")

    def run(batch):
        size = compiled_batch_size(len(batch))
        if size not in chosen:
            choose(size)
        return program(chosen[size])(batch)

    choose(1)
    return Predictor(run, backend, "auto", program(chosen[1]).engine, chosen)


def paddle_inference(program, params, device, threads, onednn, int8=False, source=None):
    """A paddle.inference predictor of a program file and its params: CUDA on 'gpu' / 'gpu:N', or the CPU with
    threads threads and oneDNN (int8 convolutions with int8). source: how errors name it (default: program)."""
    config = inference.Config(program, params)
    if device.startswith("gpu"):
        if not paddle.is_compiled_with_cuda():
            raise ValueError(f"--device {device}: this Paddle build has no CUDA; install paddlepaddle-gpu or "
                             f"use --device cpu")
        # int8 kernels are oneDNN's (CPU): on a GPU a quantized export runs its fake-quant graph in float
        config.enable_use_gpu(256, int(device.partition(":")[2] or 0))
    elif device == "cpu":
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(int(threads or os.cpu_count() or 1))
        if onednn:
            config.enable_mkldnn()
        if int8:
            if not onednn:
                raise ValueError("int8 inference runs on oneDNN: do not turn oneDNN off")
            # only the convolutions: left to itself oneDNN also runs pool2d and concat in int8, with the scale
            # of the conv that reads their output, which clips their inputs (synthetic AP 0.84 instead of 0.94)
            config.enable_mkldnn_int8({"conv2d", "fused_conv2d"})
    else:
        raise ValueError(f"--device {device}: expected cpu, gpu or gpu:N")
    config.disable_glog_info()
    try:
        return inference.create_predictor(config)
    except Exception as err:  # Paddle's own errors are many lines of C++ context: keep the gist
        raise ValueError(f"{source or program}: paddle.inference cannot load it ({error_gist(err)})") from None


def paddle_predictor(files, device, threads, onednn, precision):
    """paddle.inference of an export's (program, params): oneDNN (int8 kernels at precision int8) on CPU, or
    CUDA on a GPU."""
    if precision == "bf16":
        raise ValueError("--precision bf16 runs on OpenVINO (pip install openvino; --backend openvino)")
    program, params = files
    predictor = paddle_inference(program, params, device, threads, onednn, precision == "int8")
    image = predictor.get_input_handle(predictor.get_input_names()[0])
    heatmaps = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(batch):
        image.reshape(list(batch.shape))
        image.copy_from_cpu(batch)
        predictor.run()
        return heatmaps.copy_to_cpu()

    return Predictor(run, "paddle", precision, predictor)


def _onnx_file(model_dir, pose):
    """The ONNX program of an export: the one pose.json names (model.onnx in a folder without pose.json)."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"exported model folder {model_dir} not found")
    name = ONNX_FILE if pose is None else pose.get(ONNX_KEY)
    if not isinstance(name, str):
        raise FileNotFoundError(f"{model_dir} has no ONNX program: export it again with export.py --onnx, or use "
                                f"another --backend")
    path = os.path.join(model_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir}: no {name} (write an export with export.py --onnx)")
    return path


def onnxruntime_predictor(path, device, threads, precision):
    """onnxruntime of an ONNX program: on the CPU with threads threads, or on 'gpu' / 'gpu:N' with an
    onnxruntime that has CUDA (onnxruntime-gpu). Its precision is the program's own."""
    onnxruntime = import_onnx_package("onnxruntime", "--backend onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings are about the file (say, unused constants)
    providers = ["CPUExecutionProvider"]
    if device.startswith("gpu"):
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise ValueError(f"--device {device}: this onnxruntime has no CUDA; pip install onnxruntime-gpu or use "
                             f"--device cpu")
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}))
    elif device != "cpu":
        raise ValueError(f"--device {device}: expected cpu, gpu or gpu:N")
    try:
        session = onnxruntime.InferenceSession(path, options, providers=providers)
    except Exception as err:  # onnxruntime's own exception classes, one per failure kind
        raise ValueError(f"{path}: onnxruntime cannot load it ({error_gist(err)})") from None
    image = session.get_inputs()[0].name

    def run(batch):
        return session.run(None, {image: batch})[0]

    return Predictor(run, "onnxruntime", precision, session)


def openvino_predictor(program, threads, precision, quantized, log=log_to_stderr):
    """OpenVINO on the CPU, from a legacy-format program of an export (it finds the .pdiparams of the same
    name). A quantized program runs its convolutions in int8 (OpenVINO reads the quantize/dequantize pairs)
    where the CPU sums int8 products exactly (cpu_sums_int8_exactly), else its rounding in float arithmetic,
    said on log; bf16 needs a CPU with bf16 instructions."""
    openvino = import_openvino()
    if openvino is None:
        raise ValueError("--backend openvino: OpenVINO is not installed (pip install openvino), or use --backend "
                         "paddle")
    if quantized != (precision == "int8"):
        raise ValueError(f"--precision {precision}: on OpenVINO a quantized program runs in int8 and a float one "
                         f"in fp32 or bf16")
    if precision == "bf16" and not openvino_has_bf16():
        raise ValueError("--precision bf16: this CPU has no bf16 instructions (avx512_bf16 or AMX); use fp32")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1),
              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              # pinned threads made every other network of the process (a second export, a detector, PyTorch)
              # and this one, after another was compiled, 2-4x slower at two threads
              "ENABLE_CPU_PINNING": False}
    core = openvino.Core()
    try:
        network = core.read_model(program)
        if quantized and cpu_sums_int8_exactly():
            openvino_int8_graph(network)
        elif quantized:
            log(f"{program}: this CPU has no VNNI instructions, without which OpenVINO's int8 convolutions "
                f"saturate; running the int8 program's rounding in float (the QAT model's outputs, not faster)")
    except RuntimeError as err:
        raise ValueError(f"{program}: OpenVINO cannot load it ({error_gist(err)})") from None
    requests = {}  # batch size -> infer request of the network compiled for it

    def request_for(size):
        # one compile per batch size: the network compiled for a fixed batch runs Lite-HRNet 1.3-1.5x as fast
        # as one compiled for any batch (OpenVINO's generic kernels for split, concat and pooling)
        if size not in requests:
            network.reshape({network.input(0): [size, *list(network.input(0).get_partial_shape())[1:]]})
            try:
                requests[size] = core.compile_model(network, "CPU", config).create_infer_request()
                use_process_signal_stack()
            except RuntimeError as err:
                raise ValueError(f"{program}: OpenVINO cannot load it ({error_gist(err)})") from None
        return requests[size]

    def run(batch):
        heatmaps, start = [], 0
        while start < len(batch):
            size = compiled_batch_size(len(batch) - start)
            request = request_for(size)
            request.infer([batch[start:start + size]])
            heatmaps.append(request.get_output_tensor(0).data.copy())
            start += size
        return heatmaps[0] if len(heatmaps) == 1 else np.concatenate(heatmaps)

    return Predictor(run, "openvino", precision, request_for(1).get_compiled_model())


def openvino_int8_graph(network):
    """OpenVINO reads a quantized export's quantize_linear -> dequantize_linear pairs as float arithmetic
    (Divide, Round, Clamp to -128..127, Convert, Subtract, Multiply), which its int8 transformations do not
    recognise. Rewrite every pair, in place, as the FakeQuantize it computes (256 levels, -128..127 steps; 255
    symmetric levels, the QAT quantizer's, put OpenVINO's int8 kernels 10% off their own FakeQuantize: the one
    extra step only takes inputs beyond -scale), and every weight's dequantization as int8 codes times scale
    (its zero point is 0): OpenVINO then runs those convolutions on int8 data."""
    openvino = import_openvino()
    for clamp in [op for op in network.get_ordered_ops() if op.get_type_name() == "Clamp"]:
        divide = clamp.input_value(0).get_node().input_value(0).get_node()  # Clamp(Round(Divide(x - 0, step)))
        x = divide.input_value(0).get_node().input_value(0)
        step_factors = [divide.input_value(1).get_node().input_value(i).get_node() for i in range(2)]  # scale, 1/127
        dequantized, kinds = clamp, []
        for _ in range(3):  # Convert -> Subtract(zero point) -> Multiply(step)
            dequantized = next(iter(dequantized.output(0).get_target_inputs())).get_node()
            kinds.append(dequantized.get_type_name())
        if divide.get_type_name() != "Divide" or kinds != ["Convert", "Subtract", "Multiply"] or any(
                f.get_type_name() != "Constant" for f in step_factors):
            raise ValueError("OpenVINO read the quantized export's quantize/dequantize ops into an unexpected graph "
                             "(another OpenVINO version?); use --backend paddle")
        step = np.prod([f.get_data() for f in step_factors], axis=0).astype(np.float32)
        low, high = (openvino.opset13.constant(n * step) for n in (-model_py.QMAX - 1, model_py.QMAX))
        dequantized.output(0).replace(openvino.opset13.fake_quantize(x, low, high, low, high, 256).output(0))
    for convert in network.get_ordered_ops():
        if convert.get_type_name() == "Convert" and convert.input_value(0).get_element_type() == openvino.Type.i8:
            subtract = next(iter(convert.output(0).get_target_inputs())).get_node()
            if subtract.get_type_name() == "Subtract":
                subtract.output(0).replace(convert.output(0))


class SignalStack(ctypes.Structure):  # stack_t of sigaltstack(2)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


PROCESS_SIGNAL_STACK = []  # (memory, SignalStack): made once, never freed
SIGNAL_STACK_BYTES = 256 << 10  # more than a signal frame with AMX state (~11 KB) needs


def use_process_signal_stack():
    """Give this thread back one alternate signal stack that lives as long as the process. OpenVINO's CPU plugin
    (2026.4) gives each compiled model its own stack and, when the model is freed, puts back the one that was
    there at its compile, even if that one belonged to a model freed since. The next signal handled on that
    unmapped stack kills the process (a DataLoader worker's exit, SIGCHLD, crashed the test suite with
    SIGSEGV). Called after every compile, so every compiled model saves and restores this one."""
    if not sys.platform.startswith("linux"):
        return
    if not PROCESS_SIGNAL_STACK:
        memory = ctypes.create_string_buffer(SIGNAL_STACK_BYTES)
        PROCESS_SIGNAL_STACK.extend([memory, SignalStack(ctypes.addressof(memory), 0, SIGNAL_STACK_BYTES)])
    ctypes.CDLL(None).sigaltstack(ctypes.byref(PROCESS_SIGNAL_STACK[1]), None)


def cpu_sums_int8_exactly():
    """Whether the CPU multiplies and adds int8 in 32 bits (VNNI: avx512_vnni, avx_vnni or AMX), as OpenVINO's
    int8 convolutions need to give the fake-quantized model's outputs. x86 CPUs without it (AVX2 only) add pairs
    of u8 x i8 products in 16 bits, which saturate: one QAT convolution of real crops was off by 24% of its
    largest output. Only Linux x86 says (/proc/cpuinfo flags); elsewhere int8 is assumed exact."""
    flags = cpuinfo_field("flags")
    return flags is None or bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags.split()))


def cpuinfo_field(name):
    """The value of the first `name : value` line of Linux's /proc/cpuinfo, or None (no such line, no such file)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == name), None)
    except OSError:
        return None


def openvino_conv_precisions(predictor):
    """{precision: count} of the convolutions an OpenVINO predictor runs (e.g. {'i8': 301} for int8)."""
    counts = {}
    for op in predictor.engine.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            kind = info["runtimePrecision"].astype(str)
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def error_gist(err):
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("---")]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:300]


def _check_against_pose_json(run, model_dir, pose):
    height, width = pose["input_size"]
    expected = (1, len(pose["keypoint_names"]), *pose["heatmap_size"])
    try:
        shape = run(np.zeros((1, 3, height, width), np.float32)).shape
    except Exception as err:
        raise ValueError(f"{model_dir}: the model does not take the {height}x{width} input its {POSE_FILE} "
                         f"states ({error_gist(err)})") from None
    if shape != expected:
        raise ValueError(f"{model_dir}: the model gives heatmaps {'x'.join(map(str, shape[1:]))}, its "
                         f"{POSE_FILE} states {'x'.join(map(str, expected[1:]))}")


# ----------------------------------------------------------------------------------------------------
# Checks against eager mode


def eager_heatmaps(model, images):
    was_training = model.training
    model.eval()
    with paddle.no_grad():
        heatmaps = model(paddle.to_tensor(images)).numpy()
    model.train(was_training)
    return heatmaps


def check_export(model, model_dir, batch_size=2, seed=0, device=None, backend="paddle", precision="fp32"):
    """Compare a predictor of an export (fp32, or precision) with the eager model on a random batch.
    Returns (max |difference|, that divided by max |eager output|)."""
    height, width = read_pose_json(model_dir)["input_size"]
    images = np.random.RandomState(seed).randn(batch_size, 3, height, width).astype(np.float32)
    eager = eager_heatmaps(model, images)
    exported = create_predictor(model_dir, backend, device, precision=precision)(images)
    if exported.shape != eager.shape:
        raise ValueError(f"{model_dir}: exported model gives {exported.shape}, eager mode {eager.shape}")
    diff = float(np.abs(exported - eager).max())
    return diff, diff / max(float(np.abs(eager).max()), 1e-12)


def real_crops(input_size, count=16):
    """Crops of the first count people of the repository's COCO images (assets/coco_tiny, GT boxes), as
    evaluation makes them: float32 count x 3 x H x W. input_size: (width, height) or 'HxW'."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "coco_tiny")
    with contextlib.redirect_stderr(io.StringIO()):  # the dataset's one-line summary
        dataset = COCOKeypointDataset(os.path.join(root, "annotations", "person_keypoints_val2017.json"),
                                      os.path.join(root, "val2017"), input_size, train=False)
    return np.stack([dataset[i][0] for i in range(min(count, len(dataset)))]).astype(np.float32)


def keypoint_agreement(reference, heatmaps, margin=0.1):
    """How well heatmaps find the keypoints of reference heatmaps (same shape), for a precision whose raw values
    differ (bf16, int8): (share of keypoints whose peak is within 1 heatmap pixel of the reference's, how many
    were compared). Compared are the keypoints whose reference peak stands out: higher by margin x its
    heatmap's largest |value| than anything further than 1 pixel away (reduced precision errs relative to the
    values); the others have no one place to agree on."""
    n, k, h, w = reference.shape
    maps = reference.reshape(n * k, h, w)
    y, x = np.unravel_index(maps.reshape(n * k, -1).argmax(axis=1), (h, w))
    y2, x2 = np.unravel_index(heatmaps.reshape(n * k, -1).argmax(axis=1), (h, w))
    rows, cols = np.mgrid[:h, :w]
    far = (np.abs(cols[None] - x[:, None, None]) > 1) | (np.abs(rows[None] - y[:, None, None]) > 1)
    runner_up = np.where(far, maps, -np.inf).max(axis=(1, 2))
    distinct = maps.max(axis=(1, 2)) - runner_up > margin * np.abs(maps).max(axis=(1, 2))
    near = (np.abs(x2 - x) <= 1) & (np.abs(y2 - y) <= 1)
    return float(near[distinct].mean()) if distinct.any() else 1.0, int(distinct.sum())


def check_backends(model, model_dir, tolerance=1e-4, min_agreement=0.9, log=print):
    """check_export for every runtime the export in model_dir is for: paddle.inference, OpenVINO (fp32 and,
    where the CPU has it, bf16 by keypoint_agreement on real crops) when it has a legacy program and OpenVINO is
    installed, and onnxruntime when it has an ONNX program. One line per check; ValueError on a disagreement."""
    pose = read_pose_json(model_dir)
    backends = ["paddle"]
    if pose.get("legacy_model_file"):
        if import_openvino() is None:
            log("legacy.pdmodel (for OpenVINO) not checked: OpenVINO is not installed (pip install openvino)")
        else:
            backends.append("openvino")
    if pose.get(ONNX_KEY):
        backends.append("onnxruntime")
    for backend in backends:
        diff, relative = check_export(model, model_dir, device="cpu", backend=backend)
        where = "CPU, oneDNN" if backend == "paddle" else "CPU"
        log(f"{RUNTIME_NAMES[backend]} ({where}) vs eager on a random batch: max diff {diff:.3g} ({relative:.3g} of "
            f"the largest output)")
        if not relative <= tolerance:
            raise ValueError(f"the export in {model_dir} disagrees with eager mode on {backend}: max diff {diff:.3g} "
                             f"is {relative:.3g} of the largest output (> --tolerance {tolerance:g})")
    if "openvino" in backends and openvino_has_bf16():
        crops = real_crops(read_pose_json(model_dir)["input_size"][::-1])
        bf16 = create_predictor(model_dir, "openvino", "cpu", precision="bf16")
        agreement, compared = keypoint_agreement(eager_heatmaps(model, crops), bf16(crops))
        log(f"OpenVINO bf16 vs eager on {len(crops)} real crops: {agreement:.1%} of {compared} distinct keypoints "
            f"found within 1 heatmap pixel")
        if agreement < min_agreement:
            raise ValueError(f"the export in {model_dir} finds other keypoints in bf16: {agreement:.1%} agree "
                             f"(< {min_agreement:.0%})")


def openvino_has_bf16():
    """Whether OpenVINO (installed) can run bf16 on this CPU (avx512_bf16 or AMX instructions)."""
    return "BF16" in import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# paddle2onnx's own clean-up after converting either pip-installs a package as it runs (polygraphy, its default)
# or fails on a pass name with a typo (2.1.0's onnxoptimizer list). onnxruntime's basic graph optimisations,
# saved, do it in standard ONNX ops, 10x as fast as onnxoptimizer: the thousands of Constant and Identity nodes
# paddle2onnx writes become initializers and nothing (onnxruntime would warn once for each constant left unused),
# BatchNorm goes into the convolutions; the opset imports of onnxruntime's own domains, unused, are dropped.
ONNX_CONVERSION = """import sys, onnx, onnxruntime, paddle2onnx
program, params, path = sys.argv[1:4]
options = onnxruntime.SessionOptions()
options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
options.optimized_model_filepath, options.log_severity_level = path, 3
onnxruntime.InferenceSession(paddle2onnx.export(program, params, opset_version=13), options,
                             providers=["CPUExecutionProvider"])
model = onnx.load(path)
used = {""} | {node.domain for node in model.graph.node}
kept = [opset for opset in model.opset_import if opset.domain in used]
del model.opset_import[:]
model.opset_import.extend(kept)
onnx.save(model, path)
"""


def import_onnx_converter():
    """paddle2onnx, for --onnx, and onnxruntime beside it: without it paddle2onnx pip-installs it, for its shape
    inference, and the ONNX program is checked on it. ValueError naming the pip command when either is missing."""
    paddle2onnx = import_onnx_package("paddle2onnx", "--onnx")
    import_onnx_package("onnxruntime", "--onnx")
    return paddle2onnx


def export_onnx(model_dir, float_program=False):
    """Convert an export's legacy-format program (its int8 program in a quantized export; with float_program a
    quantized export's float program) to ONNX with the optional paddle2onnx: model.onnx (float.onnx) beside it,
    named in pose.json; the batch size stays free. The legacy program, not model.json: Lite-HRNet's shuffle is
    reshape -> transpose -> reshape there, where paddle2onnx (2.1.0) has no channel_shuffle. In a child process:
    paddle2onnx aborts its whole process on an operator it cannot convert. ValueError with its first error line."""
    paddle2onnx = import_onnx_converter()
    program, params = _model_files(model_dir, legacy=True, float_program=float_program)
    path = os.path.join(model_dir, FLOAT_ONNX_FILE if float_program else ONNX_FILE)
    tmp = path + ".tmp"
    done = subprocess.run([sys.executable, "-c", ONNX_CONVERSION, program, params, tmp], capture_output=True,
                          text=True)
    if done.returncode != 0 or not os.path.isfile(tmp):
        # "[ERROR][Paddle2ONNX] message" (its C++ code), "date [ERROR]\tmessage" (its Python code)
        lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        errors = [re.sub(r"^.*?\[ERROR\](\[\w+\])?", "", line).strip() for line in lines if "[ERROR]" in line]
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise ValueError(f"paddle2onnx {paddle2onnx.__version__} could not convert {program} "
                         f"({(errors or lines[-1:] or [f'exit code {done.returncode}'])[0]})")
    os.replace(tmp, path)
    pose = read_pose_json(model_dir)
    pose[ONNX_KEY] = os.path.basename(path)
    write_json_atomically(pose, os.path.join(model_dir, POSE_FILE))
    return path


# ----------------------------------------------------------------------------------------------------
# Command line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip().replace("\n", " "),
                                formatter_class=HelpFormatter)
    add_checkpoint_flags(p, "checkpoint (path or URL; any layout model.py reads)", required=True)
    p.add_argument("--out", required=True, help="folder for model.json, model.pdiparams and pose.json")
    p.add_argument("--legacy", action=argparse.BooleanOptionalAction, default=True,
                   help="also write legacy.pdmodel + legacy.pdiparams: the format OpenVINO reads")
    p.add_argument("--onnx", action="store_true",
                   help="also write model.onnx, converted from legacy.pdmodel (needs paddle2onnx and onnxruntime)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted |exported - eager| relative to max |eager| in the check")
    p.add_argument("--verbose", action="store_true", help="also show Paddle's and oneDNN's own log lines")
    args = p.parse_args(argv)
    try:
        if args.onnx:  # before any work
            import_onnx_converter()
            if not args.legacy:
                raise ValueError("--onnx converts legacy.pdmodel: leave out --no-legacy")
        input_size = parse_input_size(args.input_size) if args.input_size else None
        set_device("cpu")  # the check below runs on CPU whatever this Paddle build is
        model, record = load_checkpoint(args.weights, args.model, input_size, udp=args.udp or None)
        if record["qat"]:
            raise ValueError(f"--weights {args.weights} is a quantization-aware checkpoint: its int8 export is "
                             f"quantize.py's (--qat-weights)")
        files = export_model(model, args.out, record["model"], tuple(record["input_size"][::-1]),
                             keypoint_info_from_record(record), record["udp"], args.legacy, decoding_of(record))
        if args.onnx:
            files.insert(-1, export_onnx(args.out))
        check_backends(model, args.out, args.tolerance)
    except (ValueError, OSError) as err:
        raise SystemExit("error: " + " ".join(str(err).split()))
    for path in files:
        size = os.path.getsize(path)
        print(f"{size / 1e6:8.2f} MB  {path}" if size >= 1e5 else f"{size / 1e3:8.1f} kB  {path}")


if __name__ == "__main__":
    run_script(main)
