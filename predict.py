"""
Pose estimation on an image, a folder of images, a video or a webcam: skeletons drawn, one JSON of every person.

Top-down, as in evaluation: every person box is cropped to the network's input, the heatmaps are decoded to
image coordinates, and a person found from two boxes is kept once (OKS-NMS). Boxes come from the whole image
(default), a COCO detection-results file (--boxes) or OpenCV's HOG people detector (--detector hog).
The network is either an export (--model-dir, run by OpenVINO or paddle.inference) or a checkpoint (--model
--weights, eager).

    python predict.py --model-dir export/hrnet_w32 --input photo.jpg --out output/predict
    python predict.py --model hrnet_w32 --weights hrnet_w32.pdparams --input clip.mp4 --detector hog
    python predict.py --model-dir export/lite_hrnet_30 --input photo.jpg --benchmark --compare export/lite_hrnet_30 \
                      --compare-backend paddle
"""
import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # Paddle pins 1 thread if this is unset
warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time note about C++ extensions

import argparse
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import cv2
import numpy as np
import paddle

from data import (COCO_PERSON_CATEGORY, IMAGENET_MEAN, IMAGENET_STD, PIXEL_STD, box_to_center_scale,
                  crop_and_normalize, draw_poses, keypoint_info_from_category, load_json, parse_input_size,
                  read_image_bgr, temporary_path, write_image_atomically, write_json_atomically)
from evaluate import heatmaps_to_keypoints, oks_nms, person_score, predict_batch
from export import BACKENDS, PRECISIONS, create_predictor, pose_metadata, read_pose_json
from model import MODEL_NAMES, build_model, load_weights, set_device

PREDICTIONS_FILE = "predictions.json"
HOG_MAX_SIDE = 800


# ----------------------------------------------------------------------------------------------------
# The network as a function of a batch of crops


def compare_model(args, pose):
    """--compare DIR: the network of a second export with the same input size, run like --model-dir's except
    for --compare-backend / --compare-precision."""
    if not args.compare:
        return None
    other = read_pose_json(args.compare)
    if other["input_size"] != pose["input_size"]:
        raise ValueError(f"--compare {args.compare}: takes {other['input_size'][0]}x{other['input_size'][1]} crops, "
                         f"the benchmarked model {pose['input_size'][0]}x{pose['input_size'][1]}")
    return create_predictor(args.compare, args.compare_backend or args.backend, args.device, args.threads,
                            args.compare_precision, args.onednn)


def load_model(args):
    """(run, pose): run maps float32 N x 3 x H x W crops to N x K x h x w heatmaps (numpy); pose is the model's
    pose.json (an export's own, or the same description made for a checkpoint)."""
    if args.model_dir:
        if args.model or args.weights:
            raise ValueError("--model-dir and --model/--weights are alternatives: give one of them")
        pose = read_pose_json(args.model_dir)
        height, width = pose["input_size"]
        if args.input_size and parse_input_size(args.input_size) != (width, height):
            raise ValueError(f"--input-size {args.input_size}: the model in {args.model_dir} takes {height}x{width} "
                             f"crops (its pose.json); export it again at the size you want")
        if (pose["color"] != "RGB" or not np.allclose(pose["mean"], IMAGENET_MEAN)
                or not np.allclose(pose["std"], IMAGENET_STD)):
            raise ValueError(f"{args.model_dir}: pose.json asks for another normalisation than data.py's "
                             f"(RGB, ImageNet mean and std)")
        run = create_predictor(args.model_dir, args.backend, args.device, args.threads, args.precision, args.onednn)
        return run, pose
    if not (args.model and args.weights):
        raise ValueError("give --model-dir DIR (from export.py) or --model NAME with --weights CKPT")
    info = keypoint_info_from_category(COCO_PERSON_CATEGORY)
    input_size = parse_input_size(args.input_size or "256x192")
    set_device(args.device)
    model = build_model(args.model, info.num_joints)
    try:
        load_weights(model, args.weights)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"--weights {args.weights}: {err}") from None
    model.eval()

    def run(batch):
        with paddle.no_grad():
            return model(paddle.to_tensor(batch)).numpy()

    return run, pose_metadata(args.model, input_size, info, args.udp)


# ----------------------------------------------------------------------------------------------------
# Person boxes: [((x, y, w, h), score), ...] per image


def whole_image_box(image):
    return [((0.0, 0.0, float(image.shape[1]), float(image.shape[0])), 1.0)]


def read_detections(path, score_thr):
    """A COCO detection-results file -> {image_id: [(box, score), ...]}, person boxes scoring >= score_thr."""
    detections = load_json(path, "--boxes file")
    by_image = {}
    try:
        for det in detections:
            if det["category_id"] == COCO_PERSON_CATEGORY["id"] and det["score"] >= score_thr:
                x, y, w, h = (float(v) for v in det["bbox"])
                if w >= 1 and h >= 1:
                    by_image.setdefault(int(det["image_id"]), []).append(((x, y, w, h), float(det["score"])))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"--boxes {path}: expected a COCO detection-results list of "
                         f"{{image_id, category_id, bbox, score}} ({type(err).__name__}: {err})") from None
    return by_image


def coco_image_id(file_name):
    """COCO names images by their id (000000000785.jpg is image 785); None for other names."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    return int(stem) if stem.isdigit() else None


def hog_people_detector():
    """OpenCV's built-in HOG + linear SVM people detector (Dalal & Triggs) as image_bgr -> boxes."""
    if not hasattr(cv2, "HOGDescriptor"):
        raise ValueError(f"--detector hog: OpenCV {cv2.__version__} has no HOG people detector (OpenCV 5 moved it "
                         f"to opencv-contrib); pip install 'opencv-python<5', or give --boxes FILE")
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def detect(image_bgr):
        # the detector's window is 64x128 px: larger images are scanned at a reduced size, for speed
        factor = min(1.0, HOG_MAX_SIDE / max(image_bgr.shape[:2]))
        small = cv2.resize(image_bgr, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        rects, _weights = hog.detectMultiScale(small, winStride=(8, 8), padding=(8, 8), scale=1.05)
        # the SVM margins are not probabilities: every HOG box scores 1, people are ranked by their keypoints
        return [(tuple(float(v) / factor for v in rect), 1.0) for rect in rects]

    return detect


def box_source(args, kind):
    """(boxes(name, image_bgr) -> boxes, box padding, description) for --boxes / --detector."""
    if args.boxes and args.detector:
        raise ValueError("--boxes and --detector are alternatives: give one of them")
    if args.boxes:
        if kind != "images":
            raise ValueError("--boxes FILE gives boxes per COCO image id: use it with images named by their id")
        detections = read_detections(args.boxes, args.box_thr)

        def detection_boxes(name, image):
            if coco_image_id(name) is None:
                raise ValueError(f"--boxes: {name} is not named by its COCO image id (as 000000000785.jpg is 785)")
            return detections.get(coco_image_id(name), [])

        return detection_boxes, 1.25, args.boxes
    if args.detector == "hog":
        detect = hog_people_detector()
        # Dalal & Triggs' 64x128 window keeps 16 px of margin around the person: already padded, no further 1.25
        return (lambda name, image: detect(image)), 1.0, "OpenCV HOG people detector"
    # whole image = a loose box around its person: aspect kept (not stretched as in PaddleDetection's deploy), no 1.25
    return (lambda name, image: whole_image_box(image)), 1.0, "whole image"


# ----------------------------------------------------------------------------------------------------
# The pipeline on one image


def predict_image(run, image_rgb, boxes, pose, box_padding=1.25, flip=False, decode="default", dark_kernel=3,
                  batch_size=8, in_vis_thre=0.2, nms_thr=0.9):
    """Top-down pose estimation of the people in boxes [((x, y, w, h), box score), ...] of one RGB image.

    run: the network (see load_model); pose: its pose.json dict. Each box is grown to the input's aspect ratio,
    padded by box_padding and cropped; crops go through run batch_size at a time. Returns people, best first,
    after OKS-NMS at nms_thr (1 keeps all): dicts with box, box_score, keypoints (K, 3) as (x, y, score) in image
    pixels, score (box score x mean confident joint score, as in evaluation), center, scale and area."""
    height, width = pose["input_size"]
    udp = pose["udp"]
    people = []
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        centers, scales = zip(*(box_to_center_scale(box, width / height, box_padding) for box, _ in chunk))
        crops = np.stack([crop_and_normalize(image_rgb, center, scale, 0, (width, height), udp)
                          for center, scale in zip(centers, scales)])
        heatmaps = predict_batch(run, crops, flip, pose["flip_pairs"], shift=not udp)
        coords, maxvals = heatmaps_to_keypoints(heatmaps, centers, scales, decode, dark_kernel, udp)
        for (box, box_score), center, scale, xy, joint_scores in zip(chunk, centers, scales, coords, maxvals):
            keypoints = np.concatenate([xy, joint_scores], axis=1)
            people.append(dict(box=[float(v) for v in box], box_score=float(box_score), keypoints=keypoints,
                               score=person_score(keypoints[:, 2], box_score, in_vis_thre), center=center,
                               scale=scale, area=float(np.prod(scale * PIXEL_STD))))
    return [people[i] for i in oks_nms(people, nms_thr, pose["sigmas"])]


def person_json(person):
    keypoints = [[round(float(x), 2), round(float(y), 2), round(float(s), 5)] for x, y, s in person["keypoints"]]
    return {"box": [round(v, 2) for v in person["box"]], "box_score": round(person["box_score"], 5),
            "score": round(person["score"], 5), "keypoints": keypoints}


# ----------------------------------------------------------------------------------------------------
# Inputs and outputs


@dataclass
class Source:
    """What --input names. kind: 'images' (an image, a folder) or 'video' (a file, a webcam); items yields
    (file name or frame index, BGR image or None if unreadable); total: how many items (None if unknown)."""
    kind: str
    name: str
    items: Iterator
    total: Optional[int]
    fps: float = 25.0
    skipped: int = 0  # files of a folder that are not images


def read_input(spec, max_frames=0):
    """--input as a Source, after every check that can be made before the first prediction (one-line errors)."""
    if spec.isdigit():
        return _video_source(spec, f"webcam{spec}", max_frames)
    if os.path.isdir(spec):
        files = sorted(os.path.join(spec, f) for f in os.listdir(spec) if os.path.isfile(os.path.join(spec, f)))
        images = [f for f in files if cv2.haveImageReader(f)]  # by the file's signature, not its extension
        if not images:
            raise ValueError(f"--input {spec}: no images in this folder ({len(files)} other files)")
        return Source("images", os.path.basename(os.path.normpath(spec)), _read_images(images), len(images),
                      skipped=len(files) - len(images))
    if not os.path.exists(spec):
        raise FileNotFoundError(f"--input {spec}: no such image, video or folder")
    if cv2.haveImageReader(spec):
        return Source("images", os.path.basename(spec), iter([(os.path.basename(spec), _read_bgr(spec))]), 1)
    return _video_source(spec, os.path.splitext(os.path.basename(spec))[0], max_frames)


def _read_bgr(path):
    try:
        return read_image_bgr(path)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"--input {err}") from None


def _read_images(paths):
    for path in paths:
        try:
            yield os.path.basename(path), _read_bgr(path)
        except ValueError as err:
            print(f"warning: skipping {err}")
            yield os.path.basename(path), None


def _video_source(spec, name, max_frames):
    """A video file or webcam, checked to open and to give a first frame."""
    webcam = spec.isdigit()
    capture = cv2.VideoCapture(int(spec) if webcam else spec)
    if not capture.isOpened():
        raise ValueError(f"--input {spec}: no webcam with this index (absent or busy)" if webcam else
                         f"--input {spec}: neither an image nor a video OpenCV can open")
    ok, first = capture.read()
    if not ok:
        capture.release()
        raise ValueError(f"--input {spec}: the {'webcam' if webcam else 'video'} gives no frames")
    fps, count = capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    total = None if webcam or count <= 0 else min(count, max_frames or count)

    def frames():
        index, frame = 0, first
        try:
            while frame is not None and (not max_frames or index < max_frames):
                yield index, frame
                ok, frame = capture.read()
                frame, index = (frame if ok else None), index + 1
        finally:
            capture.release()

    return Source("video", name, frames(), total, fps if 0 < fps < 1000 else 25.0)


def predict_input(args, run, pose, source, boxes_for, box_padding):
    """Predict every image or frame of source; write the drawn images (or one video) and predictions.json to
    args.out. Returns the JSON's results and the number of unreadable images."""
    os.makedirs(args.out, exist_ok=True)
    video = source.kind == "video"
    video_path = os.path.join(args.out, f"{source.name}.mp4")
    writer, results, unreadable = None, [], 0
    start = last_report = time.time()
    try:
        for done, (label, image_bgr) in enumerate(source.items, 1):
            if image_bgr is None:
                unreadable += 1
                continue
            image_rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
            people = predict_image(run, image_rgb, boxes_for(label, image_bgr), pose, box_padding, args.flip,
                                   args.decode, args.dark_kernel, args.batch_size, nms_thr=args.nms_thr)
            drawn = draw_poses(image_bgr, people, pose["skeleton"], pose["flip_pairs"], args.kpt_thr)
            if video:
                if writer is None:
                    writer = cv2.VideoWriter(temporary_path(video_path), cv2.VideoWriter_fourcc(*"mp4v"), source.fps,
                                             (drawn.shape[1], drawn.shape[0]))
                    if not writer.isOpened():
                        raise ValueError(f"--out {args.out}: OpenCV cannot write an mp4 video there")
                writer.write(drawn)
            else:
                out_path = os.path.join(args.out, label)
                if not write_image_atomically(out_path, drawn):
                    raise ValueError(f"--out {args.out}: OpenCV cannot write {label} there")
            results.append({("frame" if video else "file"): label, "width": image_bgr.shape[1],
                            "height": image_bgr.shape[0], "people": [person_json(p) for p in people]})
            now = time.time()
            if not video or now - last_report > 2:
                rate = done / (now - start)
                eta = f", ETA {(source.total - done) / rate:.0f} s" if source.total and done < source.total else ""
                print(f"{done}/{source.total or '?'} {label if not video else 'frames'}: {len(people)} "
                      f"{'person' if len(people) == 1 else 'people'}, {rate:.1f}/s{eta}", flush=True)
                last_report = now
    except KeyboardInterrupt:  # how a webcam run ends: keep what was recorded
        print("stopped")
    finally:
        if writer is not None:
            writer.release()
            os.replace(temporary_path(video_path), video_path)
    json_path = os.path.join(args.out, PREDICTIONS_FILE)
    write_json_atomically({"model": pose["model"], "input_size": pose["input_size"],
                           "keypoint_names": pose["keypoint_names"], "skeleton": pose["skeleton"],
                           "results": results}, json_path)
    print(f"{len(results)} {'frames' if video else 'images'} in {time.time() - start:.1f} s; wrote "
          f"{video_path if writer else args.out + '/'} and {json_path}")
    return results, unreadable


# ----------------------------------------------------------------------------------------------------
# Benchmark


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def benchmark(args, run, pose, image_bgr, description, warmup=3, compare_run=None):
    """Latency (p50, p90) and throughput of the network alone (one call) and of the whole pipeline on the image
    (boxes to crops, network, decoding, OKS-NMS, drawing; no file reading or writing), at batch 1 (the whole
    image) and 8 (eight person boxes in the image, one batch); and the pipeline's time outside the network.
    compare_run: a second network (--compare), timed in the same loop, so that the ratio is not blurred by
    the load drifting between two processes on a shared CPU."""
    height, width = pose["input_size"]
    img_h, img_w = image_bgr.shape[:2]
    print(f"benchmark: {pose['model']} {height}x{width}, {description}, flip {'on' if args.flip else 'off'}, "
          f"decode {args.decode}, {args.benchmark_runs} runs after {warmup} warm-up, image {img_w}x{img_h}")
    for batch in (1, 8):
        crops = np.random.RandomState(batch).randn(batch, 3, height, width).astype(np.float32)
        boxes = whole_image_box(image_bgr) if batch == 1 else [
            ((img_w * (i % 4) / 4, img_h * (i // 4) / 2, img_w / 4, img_h / 2), 1.0) for i in range(batch)]
        network = []  # seconds spent in run() during the current pipeline call

        def timed_run(x):
            start = time.perf_counter()
            heatmaps = run(x)
            network.append(time.perf_counter() - start)
            return heatmaps

        def pipeline():
            network.clear()
            image_rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
            people = predict_image(timed_run, image_rgb, boxes, pose, 1.0, args.flip, args.decode,
                                   args.dark_kernel, batch, nms_thr=args.nms_thr)
            draw_poses(image_bgr, people, pose["skeleton"], pose["flip_pairs"], args.kpt_thr)

        times = {"model": [], "pipeline": [], "outside": [], "compare": []}
        for i in range(warmup + args.benchmark_runs):  # alternating: load changes on a shared CPU hit both alike
            model_time, pipeline_time = _seconds(lambda: run(crops)), _seconds(pipeline)
            compare_time = _seconds(lambda: compare_run(crops)) if compare_run else None
            if i >= warmup:
                times["model"].append(model_time)
                times["pipeline"].append(pipeline_time)
                times["outside"].append(pipeline_time - sum(network))
                times["compare"].append(compare_time)
        line = f"batch {batch}:"
        for what in ("model", "pipeline"):
            p50, p90 = np.percentile(times[what], [50, 90]) * 1000
            line += f"  {what} p50 {p50:7.1f} ms  p90 {p90:7.1f} ms  {batch * 1000 / p50:6.1f} img/s |"
        outside = np.median(times["outside"])
        print(f"{line}  outside the network p50 {outside * 1000:.1f} ms "
              f"({100 * outside / np.median(times['pipeline']):.1f}% of the pipeline)")
        if compare_run:
            other = np.median(times["compare"])
            print(f"batch {batch}:  --compare {args.compare} ({compare_run.describe()}) model p50 "
                  f"{other * 1000:7.1f} ms: this model is {other / np.median(times['model']):.2f}x as fast")


# ----------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-dir", help="exported model folder (export.py), run with OpenVINO or paddle.inference")
    p.add_argument("--model", choices=MODEL_NAMES, help="network of --weights (eager mode instead of --model-dir)")
    p.add_argument("--weights", help="checkpoint for --model (path or URL)")
    p.add_argument("--input-size", default=None, help="crop HEIGHTxWIDTH (default 256x192; an export's own)")
    p.add_argument("--udp", action="store_true", help="with --model: it was trained with UDP (data.py --udp)")
    p.add_argument("--input", required=True, help="an image, a folder of images, a video file or a webcam index")
    p.add_argument("--out", default="output/predict", help="folder for the drawn images/video and predictions.json")
    p.add_argument("--boxes", help="COCO detection-results JSON of person boxes (images named by COCO id)")
    p.add_argument("--box-thr", type=float, default=0.5, help="with --boxes: drop boxes scoring below this")
    p.add_argument("--detector", choices=("hog",), help="find people with OpenCV's HOG detector")
    p.add_argument("--kpt-thr", type=float, default=0.3, help="draw keypoints scoring above this")
    p.add_argument("--nms-thr", type=float, default=0.9, help="OKS-NMS threshold between people (1: keep all)")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored crop (2x the work)")
    p.add_argument("--decode", choices=("default", "dark"), default="default",
                   help="default = argmax + quarter offset (HRNet), dark = DARK (PaddleDetection)")
    p.add_argument("--dark-kernel", type=int, default=3, help="DARK blur kernel (PaddleDetection 3, mmpose 11)")
    p.add_argument("--batch-size", type=int, default=8, help="person crops per network call")
    p.add_argument("--max-frames", type=int, default=0, help="stop a video or webcam after this many frames (0: all)")
    p.add_argument("--device", default=None, help="cpu, gpu or gpu:N (default: gpu if Paddle has CUDA)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="runtime of --model-dir: auto = OpenVINO on CPU if installed, else paddle.inference")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="of --model-dir (default: int8 for a quantized export, else fp32; bf16 needs OpenVINO)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of --model-dir's predictor (default: all)")
    p.add_argument("--onednn", action=argparse.BooleanOptionalAction, default=True,
                   help="oneDNN kernels for --model-dir on CPU (--backend paddle)")
    p.add_argument("--benchmark", action="store_true",
                   help="time the network and the pipeline on the first image, batch 1 and 8; write nothing")
    p.add_argument("--benchmark-runs", type=int, default=20, help="timed runs per measurement")
    p.add_argument("--compare", help="with --benchmark: another export (same input size) timed in the same loop")
    p.add_argument("--compare-backend", choices=BACKENDS, default=None, help="of --compare (default: --backend)")
    p.add_argument("--compare-precision", choices=PRECISIONS, default=None,
                   help="of --compare (default: the export's own, as --precision)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.benchmark_runs < 1:
        p.error("--batch-size and --benchmark-runs must be at least 1")
    if args.compare and not args.benchmark:
        p.error("--compare is a --benchmark option")
    if (args.compare_backend or args.compare_precision) and not args.compare:
        p.error("--compare-backend and --compare-precision go with --compare")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        source = read_input(args.input, args.max_frames)
        boxes_for, box_padding, boxes_text = box_source(args, source.kind)
        input_folder = args.input if os.path.isdir(args.input) else os.path.dirname(args.input) or "."
        if (source.kind == "images" and not args.benchmark
                and os.path.realpath(args.out) == os.path.realpath(input_folder)):
            raise ValueError(f"--out {args.out}: the input's own folder; the drawn images would replace the inputs")
        run, pose = load_model(args)
        description = run.describe() if args.model_dir else "eager checkpoint"
        if args.benchmark:
            image = next((image for _, image in source.items if image is not None), None)
            if image is None:
                raise ValueError(f"--input {args.input}: no readable image to benchmark on")
            benchmark(args, run, pose, image, description, compare_run=compare_model(args, pose))
            return
        print(f"{pose['model']} ({description}) on {args.input}, boxes: {boxes_text}"
              + (f"; skipping {source.skipped} files that are not images" if source.skipped else ""))
        _, unreadable = predict_input(args, run, pose, source, boxes_for, box_padding)
        if unreadable:
            print(f"skipped {unreadable} unreadable images")
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit("error: " + " ".join(str(err).split()))


if __name__ == "__main__":
    main()
