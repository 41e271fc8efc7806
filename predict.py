"""
Pose estimation on an image, a folder of images, a video or a webcam: skeletons drawn, one JSON of every person.

Top-down, as in evaluation: every person box is cropped to the network's input, the heatmaps are decoded to
image coordinates, and a person found from two boxes is kept once (OKS-NMS). Boxes come from the whole image
(default), a COCO detection-results file (--boxes), OpenCV's HOG people detector (--detector hog) or a
PaddleDetection-exported person detector (--detector DIR). On a video (or webcam) each person keeps a track_id
from frame to frame, keypoints are smoothed per track (One-Euro filter), and with --det-every N the detector runs
every N frames, the boxes in between coming from the people's last keypoints.
The network is either an export (--model-dir, run by OpenVINO, paddle.inference or onnxruntime) or a checkpoint
(--weights, eager).

    python predict.py --model-dir export/lite_hrnet_18 --input assets/photos --out output/photos
    python predict.py --weights runs/lite_hrnet_18/best.pdparams --input output/walk.mp4 --detector hog --det-every 5
    python predict.py --model-dir export/lite_hrnet_18 --input assets/photos/hrnet_demo.jpg --benchmark \
                      --compare export/lite_hrnet_18 --compare-backend paddle
"""
import os
import sys
import warnings

if "--verbose" not in sys.argv:  # Paddle's C++ log lines (e.g. "PIR not support input out tensor"), read at import
    os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time note about C++ extensions

import argparse
import colorsys
import math
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import cv2
import numpy as np
import paddle
import yaml

from data import (COCO_PERSON_CATEGORY, HelpFormatter, IMAGENET_MEAN, IMAGENET_STD, PIXEL_STD, box_iou,
                  box_to_center_scale, crop_and_normalize, crop_to_bgr, draw_poses, heatmap_overlay, image_grid,
                  keypoint_info_from_record, label_tile, load_json, parse_input_size, read_image_bgr, run_script,
                  atomic_output, make_synthetic_video, temporary_path, write_image_atomically, write_json_atomically)
from evaluate import (add_decode_flags, chosen_decoding, heatmaps_to_keypoints, oks_iou, oks_nms, person_score,
                      predict_batch)
from export import (BACKENDS, PRECISIONS, add_runtime_flags, create_predictor, native_output_held, paddle_inference,
                    pose_metadata, read_pose_json)
from model import add_checkpoint_flags, decoding_of, load_checkpoint, set_device

PREDICTIONS_FILE = "predictions.json"
HOG_MAX_SIDE = 800
# names OpenCV's imread reads: a file named so that OpenCV cannot decode is a bad image, not a video
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jp2", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".pbm", ".pgm",
                    ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr", ".pic", ".avif"}
DETECTOR_CONFIG = "infer_cfg.yml"  # what PaddleDetection's tools/export_model.py writes beside the network
PERSON_LABELS = ("person", "pedestrian")  # COCO detectors' class name, PP-Human's pedestrian detectors'
DETECTOR_STEPS = ("Resize", "NormalizeImage", "Permute", "PadStride")
VISIBLE = 0.2  # joints scoring above this count, as in evaluation's rescoring
TRACK_MEMORY = 3  # frames a track waits for its person (a missed detection, an occlusion) before it ends
TRACK_MIN_SIMILARITY = 0.3  # mean of keypoint OKS and box IoU to a track below which a person is someone new
MIN_TRACK_KEYPOINTS = 3  # keypoints above --kpt-thr that make a box for the next frame


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
                            args.compare_precision, args.onednn, args.verbose)


def load_model(args):
    """(run, pose): run maps float32 N x 3 x H x W crops to N x K x h x w heatmaps (numpy); pose is the model's
    pose.json (an export's own, or the same description made for a checkpoint)."""
    if args.model_dir:
        if args.model or args.weights:
            raise ValueError("--model-dir and --weights are alternatives: give one of them")
        pose = read_pose_json(args.model_dir)
        height, width = pose["input_size"]
        if args.input_size and parse_input_size(args.input_size) != (width, height):
            raise ValueError(f"--input-size {args.input_size}: the model in {args.model_dir} takes {height}x{width} "
                             f"crops (its pose.json); export it again at the size you want")
        if (pose["color"] != "RGB" or not np.allclose(pose["mean"], IMAGENET_MEAN)
                or not np.allclose(pose["std"], IMAGENET_STD)):
            raise ValueError(f"{args.model_dir}: pose.json asks for another normalisation than data.py's "
                             f"(RGB, ImageNet mean and std)")
        run = create_predictor(args.model_dir, args.backend, args.device, args.threads, args.precision, args.onednn,
                               args.verbose)
        return run, pose
    if not args.weights:
        raise ValueError("give --model-dir DIR (from export.py) or --weights CKPT")
    set_device(args.device)
    input_size = parse_input_size(args.input_size) if args.input_size else None
    model, record = load_checkpoint(args.weights, args.model, input_size, udp=args.udp or None)
    model.eval()

    def run(batch):
        with paddle.no_grad():
            return model(paddle.to_tensor(batch)).numpy()

    return run, pose_metadata(record["model"], tuple(record["input_size"][::-1]), keypoint_info_from_record(record),
                              record["udp"], decoding=decoding_of(record))


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


def read_detector_config(path):
    """infer_cfg.yml, which PaddleDetection's export writes with yaml.dump, read by yaml.safe_load (plain
    values only: a tag that would build a Python object is an error)."""
    try:
        with open(path) as f:
            settings = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not the YAML PaddleDetection writes ({' '.join(str(err).split())})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: not the YAML PaddleDetection writes (a mapping of settings)")
    return settings


def detector_preprocess(steps, config_path):
    """infer_cfg.yml's Preprocess as image_rgb -> the detector's inputs (a batch of one), following PaddleDetection's
    deploy/python/preprocess.py: Resize (to target_size [h, w], or keeping the aspect ratio so that the short
    side fits the smaller target and the long side the larger), NormalizeImage (/255 if is_scale, then mean/std
    unless norm_type is none), Permute (HWC -> CHW) and PadStride (zeros to a multiple of stride).
    im_shape is the resized image's (h, w), scale_factor its (y, x) ratios to the original."""
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise ValueError(f"{config_path}: no Preprocess list of steps")
    for step in steps:
        if step.get("type") not in DETECTOR_STEPS:
            raise ValueError(f"{config_path}: Preprocess step {step.get('type')} is not supported "
                             f"(only {', '.join(DETECTOR_STEPS)})")

    def prepare(image_rgb):
        image, shape, scale = image_rgb, image_rgb.shape[:2], (1.0, 1.0)
        for step in steps:
            if step["type"] == "Resize":
                target = step["target_size"]
                target = [target, target] if isinstance(target, (int, float)) else target
                height, width = image.shape[:2]
                if step.get("keep_ratio", True):
                    factor = min(target) / min(height, width)
                    if round(factor * max(height, width)) > max(target):
                        factor = max(target) / max(height, width)
                    scale = (factor, factor)
                else:
                    scale = (target[0] / height, target[1] / width)
                image = cv2.resize(image, None, fx=scale[1], fy=scale[0],
                                   interpolation=int(step.get("interp", cv2.INTER_LINEAR)))
                shape = image.shape[:2]
            elif step["type"] == "NormalizeImage":
                image = image.astype(np.float32) / (255.0 if step.get("is_scale", True) else 1.0)
                if step.get("norm_type", "mean_std") == "mean_std":
                    image = (image - np.float32(step["mean"])) / np.float32(step["std"])
            elif step["type"] == "Permute":
                image = image.transpose(2, 0, 1)
            elif step.get("stride", 0) > 0:  # PadStride
                stride, (channels, height, width) = step["stride"], image.shape
                padded = np.zeros((channels, -(-height // stride) * stride, -(-width // stride) * stride), np.float32)
                padded[:, :height, :width] = image
                image = padded
        return {"image": np.ascontiguousarray(image[None], np.float32), "im_shape": np.float32([shape]),
                "scale_factor": np.float32([scale])}

    return prepare


def paddle_detector(model_dir, score_thr, device=None, threads=None, onednn=True):
    """A person detector exported by PaddleDetection's tools/export_model.py (PP-PicoDet, PP-YOLOE, ...: a folder
    of model.json or model.pdmodel, model.pdiparams and infer_cfg.yml; inputs image, im_shape, scale_factor;
    output boxes [class, score, x1, y1, x2, y2] in image pixels, after its NMS, and their count) as
    image_bgr -> [((x, y, w, h), score), ...] of the person class scoring >= score_thr, run by paddle.inference."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--detector {model_dir}: no such folder (expected hog or a PaddleDetection export)")
    config_path = os.path.join(model_dir, DETECTOR_CONFIG)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"--detector {model_dir}: no {DETECTOR_CONFIG} (a PaddleDetection export has one)")
    settings = read_detector_config(config_path)
    prepare = detector_preprocess(settings.get("Preprocess"), config_path)
    labels = [str(label).lower() for label in settings.get("label_list") or []]
    person = next((labels.index(name) for name in PERSON_LABELS if name in labels), 0 if len(labels) == 1 else None)
    if person is None:
        raise ValueError(f"{config_path}: label_list has no {' or '.join(PERSON_LABELS)} class ({labels[:5]}...)")
    program = next((os.path.join(model_dir, name) for name in ("model.json", "model.pdmodel")
                    if os.path.isfile(os.path.join(model_dir, name))), None)
    params = os.path.join(model_dir, "model.pdiparams")
    if program is None or not os.path.isfile(params):
        raise FileNotFoundError(f"--detector {model_dir}: no model.json or model.pdmodel with model.pdiparams")
    device = device or ("gpu" if paddle.is_compiled_with_cuda() else "cpu")
    predictor = paddle_inference(program, params, device, threads, onednn, source=f"--detector {program}")
    inputs, outputs = predictor.get_input_names(), predictor.get_output_names()
    unknown = sorted(set(inputs) - {"image", "im_shape", "scale_factor"})
    if unknown:
        raise ValueError(f"--detector {model_dir}: the network wants inputs {unknown} besides image, im_shape and "
                         f"scale_factor (not a PaddleDetection detector export)")

    def detect(image_bgr):
        feed = prepare(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
        for name in inputs:
            handle = predictor.get_input_handle(name)
            handle.reshape(list(feed[name].shape))
            handle.copy_from_cpu(feed[name])
        predictor.run()
        found = predictor.get_output_handle(outputs[0]).copy_to_cpu()
        if found.ndim != 2 or found.shape[1] != 6:
            raise ValueError(f"--detector {model_dir}: gives boxes of shape {list(found.shape)}, expected N x 6 "
                             f"[class, score, x1, y1, x2, y2] (export it with its NMS)")
        if len(outputs) > 1:
            found = found[:int(predictor.get_output_handle(outputs[1]).copy_to_cpu().reshape(-1)[0])]
        height, width = image_bgr.shape[:2]
        boxes = []
        for label, score, x1, y1, x2, y2 in found.astype(np.float64):
            x1, x2 = np.clip([x1, x2], 0, width)
            y1, y2 = np.clip([y1, y2], 0, height)
            if round(label) == person and score >= score_thr and x2 - x1 >= 1 and y2 - y1 >= 1:
                boxes.append(((float(x1), float(y1), float(x2 - x1), float(y2 - y1)), float(score)))
        return boxes

    with native_output_held():  # the first run's oneDNN notes; and a wrong export fails here, before any work
        detect(np.zeros((64, 64, 3), np.uint8))
    return detect


def box_source(args, kind):
    """(boxes(name, image_bgr) -> boxes, box padding, description) for --boxes / --detector; a video's frames are
    named by their index."""
    if args.boxes and args.detector:
        raise ValueError("--boxes and --detector are alternatives: give one of them")
    if args.det_every > 1 and (kind != "video" or not (args.boxes or args.detector)):
        raise ValueError("--det-every N: runs the person detector of a video every N frames; give a video with "
                         "--boxes or --detector (the whole-frame default needs no detection)")
    if args.boxes:
        detections = read_detections(args.boxes, args.box_thr)
        if kind == "video":  # frame i is image i of the detection file
            return (lambda index, image: detections.get(index, [])), 1.25, args.boxes

        def detection_boxes(name, image):
            if coco_image_id(name) is None:
                raise ValueError(f"--boxes: {name} is not named by its COCO image id (as 000000000785.jpg is 785)")
            return detections.get(coco_image_id(name), [])

        return detection_boxes, 1.25, args.boxes
    if args.detector == "hog":
        detect = hog_people_detector()
        # Dalal & Triggs' 64x128 window keeps 16 px of margin around the person: already padded, no further 1.25
        return (lambda name, image: detect(image)), 1.0, "OpenCV HOG people detector"
    if args.detector:
        detect = paddle_detector(args.detector, args.det_thr, args.device, args.threads, args.onednn)
        return (lambda name, image: detect(image)), 1.25, f"PaddleDetection detector {args.detector}"
    # whole image = a loose box around its person: aspect kept (not stretched as in PaddleDetection's deploy), no 1.25
    return (lambda name, image: whole_image_box(image)), 1.0, "whole image"


# ----------------------------------------------------------------------------------------------------
# The pipeline on one image


def predict_image(run, image_rgb, boxes, pose, box_padding=1.25, flip=False, decode="default", dark_kernel=3,
                  batch_size=8, in_vis_thre=0.2, nms_thr=0.9, keep_heatmaps=False):
    """Top-down pose estimation of the people in boxes [((x, y, w, h), box score), ...] of one RGB image.

    run: the network (see load_model); pose: its pose.json dict. Each box is grown to the input's aspect ratio,
    padded by box_padding and cropped; crops go through run batch_size at a time. Returns people, best first,
    after OKS-NMS at nms_thr (1 keeps all): dicts with box, box_score, keypoints (K, 3) as (x, y, score) in image
    pixels, score (box score x mean confident joint score, as in evaluation), center, scale and area; with
    keep_heatmaps also the network's input crop (BGR picture) and its output heatmaps (K, h, w)."""
    height, width = pose["input_size"]
    udp = pose["udp"]
    flip = flip and bool(pose["flip_pairs"])  # keypoints without left/right were trained without flip (data.py)
    people = []
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        centers, scales = zip(*(box_to_center_scale(box, width / height, box_padding) for box, _ in chunk))
        crops = np.stack([crop_and_normalize(image_rgb, center, scale, 0, (width, height), udp)
                          for center, scale in zip(centers, scales)])
        heatmaps = predict_batch(run, crops, flip, pose["flip_pairs"], shift=not udp)
        coords, maxvals = heatmaps_to_keypoints(heatmaps, centers, scales, decode, dark_kernel, udp)
        for i, ((box, box_score), center, scale, xy, joint_scores) in enumerate(zip(chunk, centers, scales, coords,
                                                                                   maxvals)):
            keypoints = np.concatenate([xy, joint_scores], axis=1)
            people.append(dict(box=[float(v) for v in box], box_score=float(box_score), keypoints=keypoints,
                               score=person_score(keypoints[:, 2], box_score, in_vis_thre), center=center,
                               scale=scale, area=float(np.prod(scale * PIXEL_STD))))
            if keep_heatmaps:
                people[-1].update(crop=crop_to_bgr(crops[i]), heatmaps=heatmaps[i])
    return [people[i] for i in oks_nms(people, nms_thr, pose["sigmas"])]


def draw_heatmaps(people, names, tile_height=192, columns=6):
    """What the network sees and says: per person its input crop, then each of the K predicted heatmaps blended
    over it, scaled to its own peak (a faint, unsure heatmap shows where it looks too), labelled with the joint's
    name and that peak; people one block of rows after the other."""
    blocks = []
    for person in people:
        crop = cv2.resize(person["crop"], (round(person["crop"].shape[1] * tile_height / person["crop"].shape[0]),
                                           tile_height))
        tiles = [crop]
        for name, heatmap in zip(names, person["heatmaps"]):
            peak = max(0.0, float(heatmap.max()))
            tiles.append(label_tile(heatmap_overlay(crop, heatmap / max(peak, 1e-6)), f"{name} {peak:.2f}"))
        grid = image_grid(tiles, columns)
        blocks.append(cv2.copyMakeBorder(grid, 0, 6, 0, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255)))
    return np.vstack(blocks)


def heatmaps_path(drawing_path):
    """<name>_heatmaps.jpg beside the drawing <name>.<ext>."""
    return os.path.splitext(drawing_path)[0] + "_heatmaps.jpg"


def person_json(person):
    keypoints = [[round(float(x), 2), round(float(y), 2), round(float(s), 5)] for x, y, s in person["keypoints"]]
    tracked = {"track_id": person["track_id"]} if "track_id" in person else {}
    return {**tracked, "box": [round(v, 2) for v in person["box"]], "box_score": round(person["box_score"], 5),
            "score": round(person["score"], 5), "keypoints": keypoints}


# ----------------------------------------------------------------------------------------------------
# Video: people followed from frame to frame, steady keypoints


class OneEuroFilter:
    """The One-Euro filter (Casiez, Roussel & Vogel, CHI 2012) of points (..., 2) sampled at times t (s): a
    first-order low-pass whose cutoff rises with the speed, so that a still point stops jittering and a moving
    one is not dragged behind. min_cutoff (Hz): the cutoff at rest (lower: steadier); beta (per px/s): how fast
    the cutoff rises with the speed (higher: less lag); d_cutoff (Hz): the cutoff of the speed estimate.
    A point's speed is its speed in the plane, so its two coordinates share one cutoff."""

    def __init__(self, min_cutoff=1.0, beta=0.05, d_cutoff=1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.value = self.speed = self.time = None

    @staticmethod
    def alpha(cutoff, dt):
        """Weight of a new sample in an exponential smoother equal to a low-pass at cutoff Hz sampled every dt s."""
        return 1 / (1 + 1 / (2 * math.pi * cutoff * dt))

    def __call__(self, value, t):
        value = np.asarray(value, np.float64)
        if self.value is None or t <= self.time:
            self.value, self.speed, self.time = value, np.zeros_like(value), t
            return value
        dt = t - self.time
        self.speed = self.speed + self.alpha(self.d_cutoff, dt) * ((value - self.value) / dt - self.speed)
        cutoff = self.min_cutoff + self.beta * np.linalg.norm(self.speed, axis=-1, keepdims=True)
        self.value = self.value + self.alpha(cutoff, dt) * (value - self.value)
        self.time = t
        return self.value


def _corners(box):
    x, y, w, h = box
    return x, y, x + w, y + h


class Tracker:
    """Gives the people of a video's frames track ids that stay with them. Greedy: the most similar (person,
    track) pair is linked first, then the next among the rest, down to TRACK_MIN_SIMILARITY; the tracks are those
    seen in the last `memory` frames (so a person missed for a frame or two keeps their id); similarity is the
    mean of the OKS of the keypoints (joints above VISIBLE in both) and the IoU of the boxes. With make_filter,
    each track's keypoints go through its own filter (times frame / fps); tracks match on the raw keypoints."""

    def __init__(self, sigmas, fps, make_filter=None, memory=TRACK_MEMORY, min_similarity=TRACK_MIN_SIMILARITY):
        self.sigmas, self.fps, self.make_filter = sigmas, fps, make_filter
        self.memory, self.min_similarity = memory, min_similarity
        self.tracks, self.next_id = [], 0  # tracks: dicts of track_id, filter and the last person's raw values

    def similarity(self, person, track):
        oks = oks_iou(track["keypoints"], person["keypoints"][None], track["area"], [person["area"]], self.sigmas,
                      VISIBLE)[0]
        return (oks + box_iou(_corners(track["box"]), _corners(person["box"]))) / 2

    def update(self, people, frame):
        """Sets each person's track_id (and smooths their keypoints); returns people."""
        self.tracks = [track for track in self.tracks if frame - track["frame"] <= self.memory]
        pairs = sorted(((self.similarity(person, track), i, j) for i, person in enumerate(people)
                        for j, track in enumerate(self.tracks)), key=lambda pair: -pair[0])
        linked, taken = {}, set()
        for similarity, i, j in pairs:
            if similarity < self.min_similarity:
                break
            if i not in linked and j not in taken:
                linked[i] = j
                taken.add(j)
        for i, person in enumerate(people):
            if i in linked:
                track = self.tracks[linked[i]]
            else:
                track = {"track_id": self.next_id, "filter": self.make_filter() if self.make_filter else None}
                self.next_id += 1
                self.tracks.append(track)
            track.update(keypoints=person["keypoints"].copy(), box=person["box"], area=person["area"],
                         box_score=person["box_score"], frame=frame)
            person["track_id"] = track["track_id"]
            if track["filter"]:
                smooth = track["filter"](person["keypoints"][:, :2], frame / self.fps)
                person["keypoints"] = np.concatenate([smooth, person["keypoints"][:, 2:]], axis=1)
        return people


def keypoint_box(keypoints, kpt_thr):
    """The box (x, y, w, h) around the keypoints scoring above kpt_thr; None if fewer than MIN_TRACK_KEYPOINTS."""
    confident = keypoints[keypoints[:, 2] > kpt_thr, :2]
    if len(confident) < MIN_TRACK_KEYPOINTS:
        return None
    (x1, y1), (x2, y2) = confident.min(axis=0), confident.max(axis=0)
    return float(x1), float(y1), max(1.0, float(x2 - x1)), max(1.0, float(y2 - y1))


def track_colour(track_id):
    """A BGR colour per track id, successive ids far apart in hue (golden-ratio steps)."""
    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618034) % 1, 0.85, 1.0)
    return round(b * 255), round(g * 255), round(r * 255)


class VideoPeople:
    """The people of each frame of a video, followed: person boxes from boxes_for (the detector) on the first
    frame, every det_every frames, when nobody is followed and on the frame after a followed person was lost
    (fewer than MIN_TRACK_KEYPOINTS keypoints above kpt_thr); in between, each person seen on the last frame is
    looked for in the box of their keypoints, padded by 1.25 as a detection. estimate(image_rgb, boxes, padding)
    gives a frame's people; each gets a track_id and, with make_filter, smoothed keypoints."""

    def __init__(self, estimate, boxes_for, box_padding, sigmas, fps, det_every=1, kpt_thr=0.3, make_filter=None):
        self.estimate, self.boxes_for, self.box_padding = estimate, boxes_for, box_padding
        self.det_every, self.kpt_thr = det_every, kpt_thr
        # a person the detector missed is looked for again det_every frames later: their track waits as long
        self.tracker = Tracker(sigmas, fps, make_filter, memory=max(TRACK_MEMORY, det_every + 1))
        self.last_detection, self.lost, self.detections = None, False, 0

    def __call__(self, index, image_bgr, image_rgb):
        followed = []
        for track in self.tracker.tracks:
            box = keypoint_box(track["keypoints"], self.kpt_thr) if track["frame"] == index - 1 else None
            if box:
                followed.append((box, track["box_score"]))
        detect = (self.det_every == 1 or self.lost or not followed or self.last_detection is None
                  or index - self.last_detection >= self.det_every)
        if detect:
            self.last_detection, self.detections = index, self.detections + 1
            people = self.estimate(image_rgb, self.boxes_for(index, image_bgr), self.box_padding)
        else:
            people = self.estimate(image_rgb, followed, 1.25)
            people = [person for person in people if keypoint_box(person["keypoints"], self.kpt_thr)]
        self.lost = not detect and len(people) < len(followed)
        return self.tracker.update(people, index)


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
        try:
            files = sorted(os.path.join(spec, f) for f in os.listdir(spec) if os.path.isfile(os.path.join(spec, f)))
        except OSError as err:  # e.g. no permission to list it
            raise ValueError(f"--input {spec}: cannot read this folder ({err.strerror or err})") from None
        images = [f for f in files if cv2.haveImageReader(f)]  # by the file's signature, not its extension
        if not images:
            raise ValueError(f"--input {spec}: no images in this folder ({len(files)} other files)")
        return Source("images", os.path.basename(os.path.normpath(spec)), _read_images(images), len(images),
                      skipped=len(files) - len(images))
    if not os.path.exists(spec):
        raise FileNotFoundError(f"--input {spec}: no such image, video or folder")
    if not os.access(spec, os.R_OK):
        raise ValueError(f"--input {spec}: cannot read this file (permission denied)")
    if cv2.haveImageReader(spec):
        return Source("images", os.path.basename(spec), iter([(os.path.basename(spec), _read_bgr(spec))]), 1)
    if os.path.splitext(spec)[1].lower() in IMAGE_EXTENSIONS:
        raise ValueError(f"--input {spec}: not a readable image (its content is not in a format OpenCV decodes)")
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


def make_smoother(args):
    """--smooth as a filter factory for Tracker (None: no smoothing)."""
    if args.smooth == "none":
        return None
    return lambda: OneEuroFilter(args.min_cutoff, args.beta, args.d_cutoff)


def predict_input(args, run, pose, source, boxes_for, box_padding, log=print):
    """Predict every image or frame of source; write the drawn images (or one video) and predictions.json to
    args.out. A video or webcam (one loop for both) is followed by VideoPeople: track ids, smoothing, --det-every.
    Returns the JSON's results and the number of unreadable images."""
    os.makedirs(args.out, exist_ok=True)
    video = source.kind == "video"
    video_path = os.path.join(args.out, f"{source.name}.mp4")
    writer, results, unreadable = None, [], 0
    decode, dark_kernel, _ = chosen_decoding(args, pose, "model")

    def estimate(image_rgb, boxes, padding):
        return predict_image(run, image_rgb, boxes, pose, padding, args.flip, decode, dark_kernel,
                             args.batch_size, nms_thr=args.nms_thr, keep_heatmaps=args.heatmaps and not video)

    follow = VideoPeople(estimate, boxes_for, box_padding, pose["sigmas"], source.fps, args.det_every, args.kpt_thr,
                         make_smoother(args)) if video else None
    start = last_report = time.time()
    try:
        for done, (label, image_bgr) in enumerate(source.items, 1):
            if image_bgr is None:
                unreadable += 1
                continue
            image_rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
            if video:
                people = follow(label, image_bgr, image_rgb)
                shown = [dict(p, colour=track_colour(p["track_id"]), label=p["track_id"]) for p in people]
            else:
                people = shown = estimate(image_rgb, boxes_for(label, image_bgr), box_padding)
            drawn = draw_poses(image_bgr, shown, pose["skeleton"], pose["flip_pairs"], args.kpt_thr)
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
                if args.heatmaps and people:
                    write_image_atomically(heatmaps_path(out_path), draw_heatmaps(people, pose["keypoint_names"]))
            results.append({("frame" if video else "file"): label, "width": image_bgr.shape[1],
                            "height": image_bgr.shape[0], "people": [person_json(p) for p in people]})
            now = time.time()
            if now - last_report > 2 or done == source.total:  # a progress line every 2 s, and the last
                rate = done / (now - start)
                eta = f", ETA {(source.total - done) / rate:.0f} s" if source.total and done < source.total else ""
                log(f"{done}/{source.total or '?'} {label if not video else 'frames'}: {len(people)} "
                    f"{'person' if len(people) == 1 else 'people'}, {rate:.1f}/s{eta}", flush=True)
                last_report = now
    except KeyboardInterrupt:  # how a webcam run ends: keep what was recorded
        log("stopped")
    finally:
        if writer is not None:
            writer.release()
            os.replace(temporary_path(video_path), video_path)
    json_path = os.path.join(args.out, PREDICTIONS_FILE)
    write_json_atomically({"model": pose["model"], "input_size": pose["input_size"],
                           "keypoint_names": pose["keypoint_names"], "skeleton": pose["skeleton"],
                           "results": results}, json_path)
    tracks = (f", {follow.tracker.next_id} tracks" + (f", detector on {follow.detections} frames"
                                                      if args.boxes or args.detector else "") if video else "")
    log(f"{len(results)} {'frames' if video else 'images'} in {time.time() - start:.1f} s{tracks}; wrote "
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
    decode, dark_kernel, _ = chosen_decoding(args, pose, "model")
    print(f"benchmark: {pose['model']} {height}x{width}, {description}, flip {'on' if args.flip else 'off'}, "
          f"decode {decode}, {args.benchmark_runs} runs after {warmup} warm-up, image {img_w}x{img_h}")
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
            people = predict_image(timed_run, image_rgb, boxes, pose, 1.0, args.flip, decode, dark_kernel, batch,
                                   nms_thr=args.nms_thr)
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


def benchmark_video(args, run, pose, source, boxes_for, box_padding, description, warmup=3):
    """Frames/s of the whole pipeline on the video (reading frames, boxes, crops, network, decoding, tracking,
    smoothing, drawing, writing the video and JSON, to a scratch folder) and of the network alone, in one run:
    each network call of the pipeline is made twice, one of them timed as the network alone (and left out of
    the pipeline's time), so that both figures see the same load on a shared CPU."""
    height, width = pose["input_size"]
    for _ in range(warmup):
        run(np.zeros((1, 3, height, width), np.float32))
    inside, alone, crops = [], [], []  # seconds of the pipeline's network calls, of their twins; batch sizes

    def run_twice(batch):
        # which of the two runs is the pipeline's alternates, so that an order effect (caches, clocks) is shared
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            heatmaps = run(batch)
            seconds.append(time.perf_counter() - start)
        twin = len(alone) % 2
        alone.append(seconds[twin])
        inside.append(seconds[1 - twin])
        crops.append(len(batch))
        return heatmaps

    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        results, _ = predict_input(argparse.Namespace(**dict(vars(args), out=scratch)), run_twice, pose, source,
                                   boxes_for, box_padding, log=lambda *a, **k: None)
        pipeline = time.perf_counter() - start - sum(alone)
    frames, network, outside = len(results), sum(alone), pipeline - sum(inside)
    people = sum(len(r["people"]) for r in results) / max(frames, 1)
    boxes = args.detector or args.boxes or "whole image"
    print(f"benchmark: {pose['model']} {height}x{width}, {description}, boxes: {boxes}"
          f"{f', --det-every {args.det_every}' if args.det_every > 1 else ''}, smooth {args.smooth}, video "
          f"{source.name} {frames} frames, {people:.2f} people and {len(crops) / max(frames, 1):.2f} network calls "
          f"a frame ({sum(crops) / max(len(crops), 1):.2f} crops a call)")
    print(f"whole pipeline {frames / pipeline:6.1f} frames/s | network alone {frames / network:6.1f} frames/s | "
          f"pipeline = {network / pipeline:.2f} x network | outside the network {1000 * outside / frames:.1f} ms "
          f"a frame ({100 * outside / pipeline:.1f}% of the pipeline)")


# ----------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=HelpFormatter)
    p.add_argument("--model-dir", help="exported model folder (export.py), run with OpenVINO, paddle.inference "
                   "or onnxruntime (--backend)")
    add_checkpoint_flags(p, "a checkpoint (path or URL), run eagerly, instead of --model-dir")
    p.add_argument("--input", required=True, help="an image, a folder of images, a video file or a webcam index")
    p.add_argument("--out", default="output/predict", help="folder for the drawn images/video and predictions.json")
    p.add_argument("--boxes", help="COCO detection-results JSON of person boxes (images named by COCO id)")
    p.add_argument("--box-thr", type=float, default=0.5, help="with --boxes: drop boxes scoring below this")
    p.add_argument("--detector", help="find people with hog (OpenCV's HOG detector, no download) or DIR, a "
                   "PaddleDetection-exported person detector (model.json/.pdmodel, model.pdiparams, infer_cfg.yml)")
    p.add_argument("--det-thr", type=float, default=0.5, help="with --detector DIR: drop boxes scoring below this")
    p.add_argument("--det-every", type=int, default=1,
                   help="video: run --detector/--boxes every N frames, between them follow each person from the box "
                   "of their last keypoints (a lost person triggers detection)")
    p.add_argument("--smooth", choices=("one-euro", "none"), default="one-euro",
                   help="video: smooth each track's keypoints with the One-Euro filter (Casiez et al. 2012)")
    p.add_argument("--min-cutoff", type=float, default=1.0, help="One-Euro cutoff (Hz) at rest: lower is steadier")
    p.add_argument("--beta", type=float, default=0.05,
                   help="One-Euro cutoff increase per px/s of keypoint speed: higher lags less")
    p.add_argument("--d-cutoff", type=float, default=1.0, help="One-Euro cutoff (Hz) of the speed estimate")
    p.add_argument("--kpt-thr", type=float, default=0.3, help="draw keypoints scoring above this")
    p.add_argument("--heatmaps", action="store_true",
                   help="also write <name>_heatmaps.jpg beside each drawn image: every person's crop with each "
                        "predicted heatmap over it, labelled with the joint names (images only)")
    p.add_argument("--nms-thr", type=float, default=0.9, help="OKS-NMS threshold between people (1: keep all)")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored crop (2x the work)")
    add_decode_flags(p)
    p.add_argument("--batch-size", type=int, default=8, help="person crops per network call")
    p.add_argument("--max-frames", type=int, default=0, help="stop a video or webcam after this many frames (0: all)")
    p.add_argument("--device", default=None, help="cpu, gpu or gpu:N (default: gpu if Paddle has CUDA)")
    add_runtime_flags(p)
    p.add_argument("--onednn", action=argparse.BooleanOptionalAction, default=True,
                   help="oneDNN kernels for --model-dir on CPU (--backend paddle)")
    p.add_argument("--benchmark", action="store_true",
                   help="image: time the network and the pipeline on the first image, batch 1 and 8; video: "
                   "frames/s of the whole pipeline and of the network alone; write nothing")
    p.add_argument("--benchmark-runs", type=int, default=20, help="timed runs per measurement")
    p.add_argument("--compare", help="with --benchmark: another export (same input size) timed in the same loop")
    p.add_argument("--compare-backend", choices=BACKENDS, default=None, help="of --compare (default: --backend)")
    p.add_argument("--compare-precision", choices=PRECISIONS, default=None,
                   help="of --compare (default: the export's own, as --precision)")
    p.add_argument("--readme-figures", metavar="DIR",
                   help="write README's pictures into DIR from a teaching run (--weights) and a val image (--input)")
    p.add_argument("--verbose", action="store_true", help="also show Paddle's and oneDNN's own log lines")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.benchmark_runs < 1 or args.det_every < 1:
        p.error("--batch-size, --benchmark-runs and --det-every must be at least 1")
    if args.min_cutoff <= 0 or args.d_cutoff <= 0 or args.beta < 0:
        p.error("--min-cutoff and --d-cutoff must be positive (Hz), --beta at least 0")
    if args.compare and not args.benchmark:
        p.error("--compare is a --benchmark option")
    if args.heatmaps and args.benchmark:
        p.error("--heatmaps draws predictions; --benchmark makes none")
    if args.readme_figures and not args.weights:
        p.error("--readme-figures takes the teaching run's checkpoint: --weights runs/lite_hrnet_18/best.pdparams")
    if (args.compare_backend or args.compare_precision) and not args.compare:
        p.error("--compare-backend and --compare-precision go with --compare")
    return args


def encoded_within(image, path, max_bytes):
    """image encoded for path's format (JPEG at falling quality, PNG as it is), shrunk by 0.8 a side until it
    takes at most max_bytes: README's pictures stay small in the repository."""
    while True:
        for quality in ((95, 85, 75) if path.endswith(".jpg") else (None,)):
            options = [] if quality is None else [cv2.IMWRITE_JPEG_QUALITY, quality]
            encoded = cv2.imencode(os.path.splitext(path)[1], image, options)[1]
            if len(encoded) <= max_bytes:
                return encoded
        image = cv2.resize(image, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)


def write_readme_figures(args, max_bytes=150_000):
    """--readme-figures DIR: README's pictures made again from a teaching run (--weights, in its run folder) and
    one val image (--input, its people from --boxes if given): the run's curves.png and learning.jpg, that
    image's heatmaps and the middle frame of the synthetic walking video tracked with --det-every 5."""
    run_folder = os.path.dirname(os.path.abspath(args.weights))
    with tempfile.TemporaryDirectory() as scratch:
        main(["--weights", args.weights, "--input", args.input, "--out", scratch, "--heatmaps"]
             + (["--boxes", args.boxes] if args.boxes else []))
        video, boxes = os.path.join(scratch, "walk.mp4"), os.path.join(scratch, "walk_boxes.json")
        make_synthetic_video(video, boxes_path=boxes)
        main(["--weights", args.weights, "--input", video, "--out", os.path.join(scratch, "walk"), "--boxes", boxes,
              "--det-every", "5"])
        tracked = cv2.VideoCapture(os.path.join(scratch, "walk", "walk.mp4"))
        tracked.set(cv2.CAP_PROP_POS_FRAMES, tracked.get(cv2.CAP_PROP_FRAME_COUNT) // 2)
        frame = tracked.read()[1]
        tracked.release()
        pictures = {"curves.png": read_image_bgr(os.path.join(run_folder, "curves.png")),
                    "learning.jpg": read_image_bgr(os.path.join(run_folder, "learning.jpg")),
                    "heatmaps.jpg": read_image_bgr(heatmaps_path(os.path.join(scratch,
                                                                              os.path.basename(args.input)))),
                    "tracked_frame.jpg": frame}
    os.makedirs(args.readme_figures, exist_ok=True)
    for name, image in pictures.items():
        path = os.path.join(args.readme_figures, name)
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            f.write(encoded_within(image, path, max_bytes).tobytes())
        print(f"wrote {path} ({os.path.getsize(path) / 1e3:.0f} kB)")


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.readme_figures:
            write_readme_figures(args)
            return
        source = read_input(args.input, args.max_frames)
        boxes_for, box_padding, boxes_text = box_source(args, source.kind)
        input_folder = args.input if os.path.isdir(args.input) else os.path.dirname(args.input) or "."
        if (source.kind == "images" and not args.benchmark
                and os.path.realpath(args.out) == os.path.realpath(input_folder)):
            raise ValueError(f"--out {args.out}: the input's own folder; the drawn images would replace the inputs")
        if args.heatmaps and source.kind == "video":
            raise ValueError(f"--heatmaps: pictures of single images; {args.input} is a video or webcam")
        run, pose = load_model(args)
        description = run.describe() if args.model_dir else "eager checkpoint"
        if args.benchmark and source.kind == "video":
            benchmark_video(args, run, pose, source, boxes_for, box_padding, description)
            return
        if args.benchmark:
            image = next((image for _, image in source.items if image is not None), None)
            if image is None:
                raise ValueError(f"--input {args.input}: no readable image to benchmark on")
            benchmark(args, run, pose, image, description, compare_run=compare_model(args, pose))
            return
        decoding = chosen_decoding(args, pose, "export" if args.model_dir else "checkpoint")[2]
        print(f"{pose['model']} ({description}) on {args.input}, boxes: {boxes_text}, {decoding}"
              + (f"; skipping {source.skipped} files that are not images" if source.skipped else ""))
        _, unreadable = predict_input(args, run, pose, source, boxes_for, box_padding)
        if unreadable:
            print(f"skipped {unreadable} unreadable images")
    except (ValueError, OSError) as err:
        raise SystemExit("error: " + " ".join(str(err).split()))


if __name__ == "__main__":
    run_script(main)
