"""
Export a trained HRNet / Lite-HRNet to a Paddle static inference model, and load it back with paddle.inference.

The export is the network alone, for any batch size: float32 N x 3 x H x W crops in, N x K x H/4 x W/4 heatmaps
out. Everything around it (box -> crop, normalisation, decoding, flip pairs, drawing) is described in a small
pose.json written beside it, so predict.py can run an export without the Python model code or a checkpoint.

    python export.py --model hrnet_w32 --weights hrnet_w32.pdparams --out export/hrnet_w32
    python export.py --model lite_hrnet_30 --weights lite30.pdparams --input-size 256x192 --out export/lite30 --onnx

After writing, the export is loaded with paddle.inference (CPU with oneDNN) and compared with eager mode on a
random batch; a disagreement is an error.
"""
import os
import sys
import warnings

if "--verbose" not in sys.argv:  # Paddle's C++ log lines (e.g. "PIR not support input out tensor"), read at import
    os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time note about C++ extensions

import argparse
import contextlib
import json
import shutil
import subprocess

import numpy as np
import paddle
from paddle import inference
from paddle.static import InputSpec

from data import (HEATMAP_STRIDE, HelpFormatter, IMAGENET_MEAN, IMAGENET_STD, keypoint_info_from_record,
                  parse_input_size, run_script, size_wh, write_json_atomically)
from model import add_checkpoint_flags, load_checkpoint, set_device

POSE_FILE = "pose.json"
POSE_KEYS = ("model", "input_size", "heatmap_size", "mean", "std", "color", "keypoint_names", "flip_pairs",
             "skeleton", "sigmas", "udp", "quantized", "model_file", "params_file")


# ----------------------------------------------------------------------------------------------------
# pose.json: what a predictor needs besides the network


def pose_metadata(model_name, input_size, info, udp=False, quantized=False, model_file="model.json",
                  params_file="model.pdiparams"):
    """The content of pose.json. input_size: (width, height) or 'HxW'; info: data.KeypointInfo."""
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
        "quantized": bool(quantized),
        "model_file": model_file,
        "params_file": params_file,
    }


def write_pose_json(out_dir, model_name, input_size, info, udp=False, quantized=False, model_file="model.json",
                    params_file="model.pdiparams"):
    path = os.path.join(out_dir, POSE_FILE)
    write_json_atomically(pose_metadata(model_name, input_size, info, udp, quantized, model_file, params_file), path)
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
        if not valid(pose[key]):
            raise ValueError(f"{path}: {key} is {json.dumps(pose[key])[:60]}, expected {expected}")
    num_joints = len(pose["keypoint_names"])
    if (len(pose["input_size"]) != 2 or len(pose["heatmap_size"]) != 2 or len(pose["sigmas"]) != num_joints
            or any(not 0 <= i < num_joints for pair in pose["flip_pairs"] + pose["skeleton"] for i in pair)):
        raise ValueError(f"{path}: inconsistent sizes, sigmas or keypoint indices for {num_joints} keypoints")
    return pose


# ----------------------------------------------------------------------------------------------------
# Export


def export_model(model, out_dir, model_name, input_size, info, udp=False):
    """jit.save the model for crops of input_size ((width, height) or 'HxW') and any batch size, plus pose.json.
    The model is traced in eval mode and handed back in its own mode, still eager. Returns the written files."""
    width, height = size_wh(input_size)
    names = ("model.json", "model.pdiparams")  # the PIR format
    was_training, eager_forward = model.training, model.__dict__.get("forward")
    model.eval()
    try:
        static = paddle.jit.to_static(model, input_spec=[InputSpec([None, 3, height, width], "float32", "image")],
                                      full_graph=True)
        with staged_files(out_dir, names) as staging:
            paddle.jit.save(static, os.path.join(staging, "model"))
    finally:
        # to_static replaced forward on this very layer: give the caller its eager model back
        if eager_forward is None:
            model.__dict__.pop("forward", None)
        else:
            model.forward = eager_forward
        model.train(was_training)
    pose_file = write_pose_json(out_dir, model_name, (width, height), info, udp)
    return [os.path.join(out_dir, name) for name in names] + [pose_file]


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


def _model_files(model_dir):
    """(program, params) of an export: the ones pose.json names, else model.json (PIR) or model.pdmodel (legacy)."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"exported model folder {model_dir} not found")
    if os.path.isfile(os.path.join(model_dir, POSE_FILE)):
        pose = read_pose_json(model_dir)
        candidates = [(pose["model_file"], pose["params_file"])]
    else:
        candidates = [("model.json", "model.pdiparams"), ("model.pdmodel", "model.pdiparams")]
    for program, params in candidates:
        if os.path.isfile(os.path.join(model_dir, program)) and os.path.isfile(os.path.join(model_dir, params)):
            return os.path.join(model_dir, program), os.path.join(model_dir, params)
    names = " or ".join(f"{program} + {params}" for program, params in candidates)
    raise FileNotFoundError(f"{model_dir}: no {names} (write an export with export.py)")


@contextlib.contextmanager
def native_stdout_to_stderr():
    """Paddle 3.3.1's oneDNN kernel choice prints debug lines ('ReduceMeanCheckIfOneDNNSupport') straight to
    the process's stdout on a predictor's first run: send them to stderr, so stdout carries only our output."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def create_predictor(model_dir, device=None, threads=None, onednn=True, int8=False):
    """A paddle.inference predictor of an export, as a function: float32 N x 3 x H x W numpy -> N x K x h x w.

    device: 'cpu', 'gpu' or 'gpu:N' (default: the GPU when Paddle has CUDA); threads: CPU math threads
    (default: all cores); onednn: oneDNN kernels on CPU; int8: oneDNN int8 kernels for a quantized (fake-quant,
    legacy-format) export. With a pose.json beside the model, one warm-up run checks that the network takes
    the input size it states and gives the heatmaps it states."""
    program, params = _model_files(model_dir)
    config = inference.Config(program, params)
    device = device or ("gpu" if paddle.is_compiled_with_cuda() else "cpu")
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
        predictor = inference.create_predictor(config)
    except Exception as err:  # Paddle's own errors are many lines of C++ context: keep the gist
        raise ValueError(f"{program}: paddle.inference cannot load it ({_gist(err)})") from None
    image = predictor.get_input_handle(predictor.get_input_names()[0])
    heatmaps = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        image.reshape(list(batch.shape))
        image.copy_from_cpu(batch)
        predictor.run()
        return heatmaps.copy_to_cpu()

    if os.path.isfile(os.path.join(model_dir, POSE_FILE)):
        _check_against_pose_json(run, model_dir, read_pose_json(model_dir))
    return run


def _gist(err):
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("---")]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:300]


def _check_against_pose_json(run, model_dir, pose):
    height, width = pose["input_size"]
    expected = (1, len(pose["keypoint_names"]), *pose["heatmap_size"])
    try:
        with native_stdout_to_stderr():
            shape = run(np.zeros((1, 3, height, width), np.float32)).shape
    except Exception as err:
        raise ValueError(f"{model_dir}: the model does not take the {height}x{width} input its {POSE_FILE} "
                         f"states ({_gist(err)})") from None
    if shape != expected:
        raise ValueError(f"{model_dir}: the model gives heatmaps {'x'.join(map(str, shape[1:]))}, its "
                         f"{POSE_FILE} states {'x'.join(map(str, expected[1:]))}")


def check_export(model, model_dir, batch_size=2, seed=0, device=None):
    """Compare the predictor of an export with the eager model on a random batch.
    Returns (max |difference|, that divided by max |eager output|)."""
    height, width = read_pose_json(model_dir)["input_size"]
    images = np.random.RandomState(seed).randn(batch_size, 3, height, width).astype(np.float32)
    was_training = model.training
    model.eval()
    with paddle.no_grad():
        eager = model(paddle.to_tensor(images)).numpy()
    model.train(was_training)
    exported = create_predictor(model_dir, device=device)(images)
    if exported.shape != eager.shape:
        raise ValueError(f"{model_dir}: exported model gives {exported.shape}, eager mode {eager.shape}")
    diff = float(np.abs(exported - eager).max())
    return diff, diff / max(float(np.abs(eager).max()), 1e-12)


def export_onnx(model_dir):
    """model.onnx beside the Paddle export, through the optional paddle2onnx package, in a child process:
    paddle2onnx aborts its whole process on an operator it cannot convert (2.1.0: Lite-HRNet's channel_shuffle)."""
    program, params = _model_files(model_dir)
    path = os.path.join(model_dir, "model.onnx")
    tmp = path + ".tmp"
    convert = "import sys, paddle2onnx; paddle2onnx.export(*sys.argv[1:4], opset_version=13)"
    done = subprocess.run([sys.executable, "-c", convert, program, params, tmp], capture_output=True, text=True)
    if done.returncode != 0 or not os.path.isfile(tmp):
        errors = [line.strip() for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line]
        raise ValueError(f"--onnx: paddle2onnx could not convert {program} "
                         f"({errors[0] if errors else f'exit code {done.returncode}'}); the Paddle export is complete")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------------
# Command line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip().replace("\n", " "),
                                formatter_class=HelpFormatter)
    add_checkpoint_flags(p, "checkpoint (path or URL; any layout model.py reads)", required=True)
    p.add_argument("--out", required=True, help="folder for model.json, model.pdiparams and pose.json")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (needs paddle2onnx)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted |exported - eager| relative to max |eager| in the check")
    p.add_argument("--verbose", action="store_true", help="also show Paddle's and oneDNN's own log lines")
    args = p.parse_args(argv)
    if args.onnx:
        try:
            import paddle2onnx  # noqa: F401  (only to fail before any work)
        except ImportError:
            raise SystemExit("error: --onnx needs paddle2onnx: pip install paddle2onnx onnxruntime")
    try:
        input_size = parse_input_size(args.input_size) if args.input_size else None
        set_device("cpu")  # the check below runs on CPU whatever this Paddle build is
        model, record = load_checkpoint(args.weights, args.model, input_size, udp=args.udp or None)
        if record["qat"]:
            raise ValueError(f"--weights {args.weights} is a quantization-aware checkpoint: its int8 export is "
                             f"quantize.py's (--qat-weights)")
        files = export_model(model, args.out, record["model"], tuple(record["input_size"][::-1]),
                             keypoint_info_from_record(record), record["udp"])
        diff, relative = check_export(model, args.out, device="cpu")
        print(f"paddle.inference (CPU, oneDNN) vs eager on a random batch: max diff {diff:.3g} "
              f"({relative:.3g} of the largest output)")
        if not relative <= args.tolerance:
            raise ValueError(f"the export in {args.out} disagrees with eager mode: max diff {diff:.3g} is "
                             f"{relative:.3g} of the largest output (> --tolerance {args.tolerance:g})")
        if args.onnx:
            files.append(export_onnx(args.out))
    except (ValueError, OSError) as err:
        raise SystemExit("error: " + " ".join(str(err).split()))
    for path in files:
        size = os.path.getsize(path)
        print(f"{size / 1e6:8.2f} MB  {path}" if size >= 1e5 else f"{size / 1e3:8.1f} kB  {path}")


if __name__ == "__main__":
    run_script(main)
