"""Data for top-down pose estimation (HRNet / Lite-HRNet): COCO-format datasets, the crop/augment/target
pipeline, a synthetic stick-figure dataset, and a resumable COCO downloader.

Top-down means every sample is one person box: the box is padded to the network's aspect ratio, cropped
and resized with one affine warp, and the network predicts one heatmap per keypoint at 1/4 resolution.
Everything here follows the official HRNet code (Sun et al. 2019, Xiao et al. 2018) unless a comment says
otherwise; UDP is Huang et al. 2020 ("The Devil is in the Details").

    python data.py synth --out data/synth                # zero-download demo dataset in COCO format
    python data.py download --root data/coco            # official COCO 2017 (resumable, verified)
    python data.py bench --data data/coco                # training samples/s on one core
    python data.py scale-bench                           # build time and memory of a COCO-sized set (from assets/)
    python data.py show --data data/synth --out crops.jpg
    python data.py subset --data data/synth --keypoints left_wrist,right_wrist --out data/wrists  # named joints
"""
import argparse
import colorsys
import contextlib
import ctypes
import functools
import hashlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from multiprocessing import Pool

import cv2
import numpy as np

warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time note about building C++ extensions
import paddle  # noqa: E402
from paddle.io.dataloader.collate import default_collate_fn  # noqa: E402

# Parallelism comes from worker processes (DataLoader, the synth pool), which are forked: a child forked
# after OpenCV's thread pool has run deadlocks on it. One OpenCV thread per process keeps forking safe.
cv2.setNumThreads(1)

COCO_KEYPOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle"]
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]  # 1-based, as in COCO files
COCO_PERSON_CATEGORY = {"supercategory": "person", "id": 1, "name": "person",
                        "keypoints": COCO_KEYPOINT_NAMES, "skeleton": COCO_SKELETON}
# Per-keypoint OKS falloff, measured by COCO from redundant human annotations.
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89],
                       np.float32) / 10
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # RGB, images scaled to 0..1
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
PIXEL_STD = 200  # box scales are stored in units of 200 px (a historical MPII convention kept by every HRNet code base)
HEATMAP_STRIDE = 4
COCO_BASE_URL = "http://images.cocodataset.org"
# Sizes and MD5s of the official zips, as listed by many public download scripts (e.g. PaddleDetection's).
COCO_FILES = {
    "train": ("zips/train2017.zip", 19336861798, "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val": ("zips/val2017.zip", 815585330, "442b8da7639aecaf257c1dceb8ba8c80"),
    "annotations": ("annotations/annotations_trainval2017.zip", 252907541, "f4bbac642086de4f52a3fdda2de5fa2c"),
}


def progress_printer(label, total, unit="", divisor=1, start_done=0):
    """Returns update(done, final=False) that prints 'label: done/total unit, rate, ETA' at most twice a second.
    start_done: work already done before (a resumed download), left out of the rate."""
    start, last = time.time(), [0.0]
    number = "{:.0f}" if divisor == 1 else "{:.1f}"

    def update(done, final=False):
        now = time.time()
        if not final and now - last[0] < 0.5:
            return
        last[0] = now
        rate = (done - start_done) / max(now - start, 1e-9)
        eta = f"ETA {(total - done) / rate:.0f}s" if total and rate > 0 and not final else f"{now - start:.1f}s"
        total_text = "/" + number.format(total / divisor) if total else ""
        sys.stderr.write(f"\r{label}: {number.format(done / divisor)}{total_text} {unit}  "
                         f"{rate / divisor:.1f} {unit}/s  {eta}   ")
        sys.stderr.write("\n" if final else "")
        sys.stderr.flush()
    return update


# ----------------------------------------------------------------------------------------------------------
# Sizes and keypoint metadata

def parse_size(text, flag):
    """Every size on the command line is HEIGHTxWIDTH, as the papers write 256x192; inside, sizes are
    (width, height) pairs, as OpenCV takes them. Returns (width, height)."""
    try:
        height, width = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"{flag} {text}: expected HEIGHTxWIDTH such as 256x192") from None
    return width, height


def parse_input_size(text):
    """The network's input size: '256x192' -> (192, 256), multiples of 32."""
    width, height = parse_size(text, "--input-size")
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise ValueError(f"--input-size {text}: height and width must be positive multiples of 32 "
                         f"(the networks downsample by 32)")
    return width, height


def size_wh(input_size):
    """Accepts '256x192' (H x W) or a (width, height) pair."""
    if isinstance(input_size, str):
        return parse_input_size(input_size)
    width, height = (int(v) for v in input_size)
    return parse_input_size(f"{height}x{width}")


def default_sigma(input_size):
    """Heatmap Gaussian sigma: 2 at 256x192 and 3 at 384x288 (HRNet configs), i.e. proportional to height."""
    return 2.0 * size_wh(input_size)[1] / 256


@dataclass
class KeypointInfo:
    names: list
    flip_pairs: list      # [left, right] index pairs, swapped when the image is mirrored
    skeleton: list        # 0-based index pairs, for drawing
    sigmas: np.ndarray    # OKS sigmas, float32 (K,)
    upper_body_ids: list  # used by the half-body augmentation

    @property
    def num_joints(self):
        return len(self.names)

    @property
    def flip(self):
        """False when no joints swap (names without left/right, see keypoint_info_from_category): no flip
        augmentation, no flip test."""
        return bool(self.flip_pairs)

    def to_record(self):
        """Plain JSON-able fields, as checkpoints and pose.json store them."""
        return {"keypoint_names": list(self.names), "flip_pairs": [[int(a), int(b)] for a, b in self.flip_pairs],
                "skeleton": [[int(a), int(b)] for a, b in self.skeleton],
                "sigmas": [round(float(s), 6) for s in self.sigmas],
                "upper_body_ids": [int(i) for i in self.upper_body_ids]}


def keypoint_info_from_record(record):
    """The inverse of KeypointInfo.to_record (a checkpoint's or pose.json's keypoint fields)."""
    names = list(record["keypoint_names"])
    upper = record.get("upper_body_ids", range(len(names)))  # pose.json has no half-body ids: inference needs none
    return KeypointInfo(names, [list(p) for p in record["flip_pairs"]], [list(p) for p in record["skeleton"]],
                        np.array(record["sigmas"], np.float32), list(upper))


_WARNED = set()


def warn_once(message):
    """warnings.warn, but each message only once per process (a dataset is read for training, then again by every
    evaluation; Python's own once-per-location rule is reset whenever a library touches the warning filters)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=2)


# Public keypoint sets whose own evaluation uses other OKS sigmas than COCO's, by their canonical names (see
# _canonical_name). CrowdPose: crowdposetools' cocoeval.py (COCO's values, 0.079 for head and neck), as in mmpose's
# configs/_base_/datasets/crowdpose.py. AI Challenger: its keypoint_eval.py deltas halved, as in mmpose's
# configs/_base_/datasets/aic.py.
KNOWN_SIGMAS = {
    "CrowdPose": (["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                   "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head_top", "neck"],
                  [.079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089, .079, .079]),
    "AI Challenger": (["right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
                       "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top",
                       "neck"],
                      [0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642,
                       0.03686941, 0.01981803, 0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173]),
}
_SIDE_WORDS = {"left": "left", "l": "left", "right": "right", "r": "right"}
_HEAD_TOP = {"head", "head_top", "top_head", "top_of_head", "headtop", "tophead"}
_LOWER_BODY_PARTS = ("hip", "knee", "ankle", "foot", "heel", "toe", "pelvis", "leg", "thigh", "shin", "calf")


def _name_tokens(name):
    """'Left Shoulder', 'left_shoulder', 'Right-ankle', 'leftShoulder', 'LShoulder' -> lowercase words."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))  # camelCase
    text = re.sub(r"([A-Z])([A-Z][a-z])", r"\1 \2", text)     # LShoulder
    return [t for t in re.split(r"[\s_\-.]+", text.lower()) if t]


def _side_of(tokens, glued_letter=False):
    """(side, the name with its side word blanked) for a name with a side word ('left', 'L', 'leftshoulder'), else
    None. glued_letter: also read a leading l/r glued to a word ('lshoulder'), only trusted when both sides exist."""
    for i, token in enumerate(tokens):
        parts = None
        if token in _SIDE_WORDS:
            parts = [_SIDE_WORDS[token], "*"]
        for word in ("left", "right"):
            if token.startswith(word) and len(token) > len(word):
                parts = [word, "*", token[len(word):]]
        if not parts and glued_letter and token[0] in "lr" and len(token) > 2:
            parts = [_SIDE_WORDS[token[0]], "*", token[1:]]
        if parts:
            return parts[0], tuple(tokens[:i] + parts[1:] + tokens[i + 1:])
    return None


def _pair_by_side(keyed):
    """keyed: {index: (side, key)} -> [left, right] pairs of indices whose keys match, each index in one pair."""
    by_key = {}
    for i, (side, key) in keyed.items():
        by_key.setdefault(key, {}).setdefault(side, []).append(i)
    return [[sides["left"][0], sides["right"][0]] for sides in by_key.values()
            if len(sides.get("left", ())) == 1 and len(sides.get("right", ())) == 1]


def flip_pairs_from_names(names):
    """[left, right] index pairs from joint names in any common style: left_x/right_x (COCO, CrowdPose), 'Left X'
    (AI Challenger), Left-x (MHP), l_x/r_x, x_l/x_r, leftX, LX, and lx/rx when both exist. Returns (pairs, the
    names that have a side word but no counterpart); pairs are sorted by the left joint."""
    tokens = [_name_tokens(name) for name in names]
    strong = {i: side for i, t in enumerate(tokens) if (side := _side_of(t))}
    pairs = _pair_by_side(strong)
    paired = {i for pair in pairs for i in pair}
    glued = {i: side for i, t in enumerate(tokens) if i not in strong and (side := _side_of(t, glued_letter=True))}
    pairs += _pair_by_side(glued)
    unpaired = [names[i] for i in strong if i not in paired]
    return sorted(pairs), unpaired


def _canonical_name(tokens, side=None):
    """One spelling per joint: lowercase words joined by '_', the side first as left/right ('wrist_l' is
    'left_wrist'), head-top aliases unified."""
    name = "_".join(tokens)
    if side:
        side_name, key = side
        name = "_".join([side_name] + [t for t in key if t != "*"])
    return "head_top" if name in _HEAD_TOP else name


def canonical_joint_names(names, flip_pairs=None):
    """One spelling per joint, read the way flip pairs are found: 'LeftWrist', 'l_wrist', 'Left-wrist' ->
    'left_wrist'; 'head', 'HeadTop' -> 'head_top'. A leading l/r glued to a word ('lwrist') counts as a side only
    for joints in a flip pair (flip_pairs; default: those flip_pairs_from_names finds), as there. Sigmas of known
    sets and the joints a checkpoint's head carries into another keypoint set are matched by these names."""
    if flip_pairs is None:
        flip_pairs = flip_pairs_from_names(names)[0]
    paired = {i for pair in flip_pairs for i in pair}
    tokens = [_name_tokens(name) for name in names]
    return [_canonical_name(t, _side_of(t) or (_side_of(t, glued_letter=True) if i in paired else None))
            for i, t in enumerate(tokens)]


def parse_flip_pairs(texts, names):
    """--flip-pairs 'A,B' ... (0-based indices or keypoint names, the left joint first) -> [[left, right], ...]."""
    pairs, used = [], set()
    for text in texts:
        items = str(text).split(",")
        pair = []
        for item in (s.strip() for s in items):
            if item.isdigit() and int(item) < len(names):
                pair.append(int(item))
            elif item in names:
                pair.append(names.index(item))
        if len(items) != 2 or len(pair) != 2 or pair[0] == pair[1] or used & set(pair):
            raise ValueError(f"--flip-pairs {text}: expected LEFT,RIGHT as two different 0-based indices below "
                             f"{len(names)} or keypoint names ({', '.join(names)}), each joint in one pair at most")
        used.update(pair)
        pairs.append(pair)
    return pairs


def _valid_skeleton(category, num_joints):
    """0-based limb pairs for drawing. A skeleton is only for drawing: one with pairs outside 1..K (e.g. COCO's
    17-joint skeleton copied into a 14-keypoint CrowdPose file) was made for another keypoint set and is dropped."""
    skeleton = category.get("skeleton") or []
    try:
        pairs = [[int(a) - 1, int(b) - 1] for a, b in skeleton]
    except (TypeError, ValueError):
        pairs = None
    if pairs is None or any(not 0 <= i < num_joints for pair in pairs for i in pair):
        warn_once(f"category {category.get('name')!r}: its skeleton refers to keypoints outside 1..{num_joints} "
                  f"(made for another keypoint set?); drawing keypoints without limbs")
        return []
    return pairs


def keypoint_info_from_category(category, sigmas_file=None, flip_pairs=None):
    """Keypoint metadata from a COCO category dict, so any K-keypoint COCO-format file works unchanged.
    Flip pairs come from the names (flip_pairs_from_names), or from flip_pairs ('A,B' texts, see parse_flip_pairs);
    names that give no pairs, or a side without its counterpart, turn flipping off (said once), never guessed.
    OKS sigmas: COCO's for COCO's 17 keypoints, else an --oks-sigmas JSON list, else those of a known public set
    (KNOWN_SIGMAS), else COCO's value for names COCO knows and 0.025 (COCO's strictest) for the rest (said once)."""
    names = category.get("keypoints")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"category {category.get('name')!r} has no 'keypoints' list of names")
    if flip_pairs:
        pairs = parse_flip_pairs(flip_pairs, names)
    else:
        pairs, unpaired = flip_pairs_from_names(names)
        if not pairs or unpaired:
            why = f"no counterpart for {', '.join(unpaired)}" if unpaired else "no left/right pairs"
            warn_once(f"keypoints {names}: {why} in their names, so flipping would mislabel joints: training without "
                      f"flip augmentation and evaluating without flip test (--flip-pairs LEFT,RIGHT ... to set them)")
            pairs = []
    canonical = canonical_joint_names(names, pairs)
    skeleton = _valid_skeleton(category, len(names))
    lower = [name.lower() for name in names]
    upper_body_ids = [i for i, name in enumerate(lower) if not any(part in name for part in _LOWER_BODY_PARTS)]
    known = next((name for name, (known_names, _) in KNOWN_SIGMAS.items() if canonical == known_names), None)
    if canonical == COCO_KEYPOINT_NAMES:
        sigmas = COCO_SIGMAS.copy()
    elif sigmas_file:
        values = load_json(sigmas_file, "--oks-sigmas file")
        if not finite_numbers(values, len(names)) or min(values) <= 0:
            raise ValueError(f"--oks-sigmas file {sigmas_file}: expected a JSON list of {len(names)} "
                             f"positive numbers")
        sigmas = np.array(values, np.float32)
    elif known:
        sigmas = np.array(KNOWN_SIGMAS[known][1], np.float32)
        warn_once(f"keypoints {names}: using {known}'s OKS sigmas (its evaluation's), not COCO's")
    else:
        coco = dict(zip(COCO_KEYPOINT_NAMES, COCO_SIGMAS))
        sigmas = np.array([coco.get(name, 0.025) for name in canonical], np.float32)
        warn_once(f"no --oks-sigmas file for the {len(names)} keypoints {names}: using COCO sigmas for names COCO "
                  f"has and 0.025 for the others; OKS/AP are only comparable with the dataset's own sigmas")
    return KeypointInfo(names, pairs, skeleton, sigmas, upper_body_ids)


# ----------------------------------------------------------------------------------------------------------
# Geometry: box -> center/scale, the crop affine, and its inverse for predictions

def box_to_center_scale(box_xywh, aspect_ratio, padding=1.25):
    """Box -> center and size (in units of 200 px), grown to the input aspect ratio, then padded by 1.25
    so the whole person plus some context is in the crop. One box [x, y, w, h] gives (2,) arrays, an (N, 4)
    array of boxes (N, 2) arrays; float64 arithmetic, as the official code's Python floats."""
    x, y, w, h = np.moveaxis(np.asarray(box_xywh, np.float64)[..., :4], -1, 0)
    center = np.stack([x + w * 0.5, y + h * 0.5], axis=-1).astype(np.float32)
    w, h = (np.where(w < aspect_ratio * h, h * aspect_ratio, w), np.where(w > aspect_ratio * h, w / aspect_ratio, h))
    scale = np.stack([w / PIXEL_STD, h / PIXEL_STD], axis=-1).astype(np.float32) * padding
    return center, scale


def _rotate(point, angle_rad):
    sn, cs = np.sin(angle_rad), np.cos(angle_rad)
    return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs])


def _third_point(a, b):
    """b + (a - b) turned 90 degrees: the third point that pins down an affine map from two."""
    direction = a - b
    return b + np.array([-direction[1], direction[0]], np.float32)


def get_affine_transform(center, scale, rot_deg, output_size, inv=False):
    """2x3 matrix taking the box (center, scale*200 px wide, rotated by rot_deg) to an output of (W, H).
    Like the official code it matches three point pairs (center, a point above it, and a third at 90 degrees),
    which gives one uniform scale output_w / (scale_x * 200); scale_y is implied by the aspect ratio."""
    src_w = scale[0] * PIXEL_STD
    out_w, out_h = output_size
    src, dst = np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + _rotate([0.0, src_w * -0.5], np.pi * rot_deg / 180)
    src[2] = _third_point(src[0], src[1])
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = np.array([out_w * 0.5, out_h * 0.5]) + [0.0, out_w * -0.5]
    dst[2] = _third_point(dst[0], dst[1])
    return cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)


def _udp_warp_matrix(center, scale, rot_deg, output_size):
    """UDP's crop: sizes are measured in pixel intervals (size - 1), so the first and last pixel centres of the
    box map exactly onto those of the output and the heatmap, removing the half-pixel bias of the standard warp.
    (mmpose's get_warp_matrix turns the other way for the same angle; we keep rot_deg's meaning consistent.)"""
    theta = -np.deg2rad(rot_deg)
    box_w, box_h = scale[0] * PIXEL_STD, scale[1] * PIXEL_STD
    sx, sy = (output_size[0] - 1.0) / box_w, (output_size[1] - 1.0) / box_h
    cs, sn = math.cos(theta), math.sin(theta)
    cx, cy = float(center[0]), float(center[1])
    return np.array([[cs * sx, -sn * sx, sx * (-cx * cs + cy * sn + 0.5 * box_w)],
                     [sn * sy, cs * sy, sy * (-cx * sn - cy * cs + 0.5 * box_h)]])


def affine_transform(points, matrix):
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def transform_preds(coords, center, scale, heatmap_size, udp=False):
    """Heatmap coordinates (K, 2) -> image coordinates: the inverse crop (rotation 0), as the official
    transform_preds; heatmap coordinates are used as they are, with no half-pixel term."""
    coords = np.asarray(coords, np.float64)[..., :2]
    if udp:
        box = np.asarray(scale, np.float64) * PIXEL_STD
        return coords * box / (np.asarray(heatmap_size, np.float64) - 1.0) + np.asarray(center) - box * 0.5
    return affine_transform(coords, get_affine_transform(center, scale, 0, heatmap_size, inv=True))


def _crop_matrix(center, scale, rot_deg, output_size, udp):
    if udp:
        return _udp_warp_matrix(center, scale, rot_deg, output_size)
    return get_affine_transform(center, scale, rot_deg, output_size)


# ----------------------------------------------------------------------------------------------------------
# Images

def read_image_bgr(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} not found")
    # COCO labels refer to the stored pixel grid: honouring an EXIF rotation would misplace every keypoint.
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"image {path} could not be decoded (corrupt or not an image)")
    return image


def read_image_rgb(path):
    return cv2.cvtColor(read_image_bgr(path), cv2.COLOR_BGR2RGB)


_NORM_MUL = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_NORM_SUB = (IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def normalize_image(image_rgb):
    """uint8 HxWx3 RGB -> float32 3xHxW, (x/255 - mean)/std folded into one multiply-add per channel."""
    height, width = image_rgb.shape[:2]
    out = np.empty((3, height, width), np.float32)
    for c, channel in enumerate(cv2.split(image_rgb)):  # split + per-plane ops: ~4x faster than a transpose
        np.multiply(channel, _NORM_MUL[c], out=out[c])
        out[c] -= _NORM_SUB[c]
    return out


def crop_and_normalize(image_rgb, center, scale, rot_deg, input_size, udp=False):
    width, height = size_wh(input_size)
    matrix = _crop_matrix(center, scale, rot_deg, (width, height), udp)
    return normalize_image(cv2.warpAffine(image_rgb, matrix, (width, height), flags=cv2.INTER_LINEAR))


# ----------------------------------------------------------------------------------------------------------
# Heatmap targets

@functools.lru_cache(maxsize=16)
def _gaussian_patch(sigma):
    """The official (2*3sigma+1)^2 unnormalised Gaussian (peak 1), same float32 ops; built once per sigma.
    Its peak sits ceil(3 sigma) from its first pixel, the official size // 2 except where 3 sigma has a fraction
    below one half (sigma 0.75, the default at 96x64): there size // 2 is a pixel early (see generate_target)."""
    size = 2 * sigma * 3 + 1
    x = np.arange(0, size, 1, np.float32)
    y = x[:, np.newaxis]
    x0 = y0 = math.ceil(sigma * 3)
    patch = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))
    patch.setflags(write=False)
    return patch


def _visibility_weight(joints_vis, num_joints):
    return np.asarray(joints_vis, np.float32).reshape(num_joints, -1)[:, :1].copy()


def generate_target(joints, joints_vis, input_size, heatmap_size, sigma, udp=False):
    """MSRA heatmaps, bit-for-bit the official formula: the Gaussian is centred on the joint rounded to the
    heatmap grid, pasted within a 3-sigma window; joints whose window misses the map get weight 0.
    udp: UDP's heatmaps instead: stride (input-1)/(heatmap-1) and the Gaussian centred on the exact sub-pixel
    joint (evaluated on the same window), so decoding can recover the joint without the rounding bias."""
    joints = np.asarray(joints, np.float64)
    num_joints = len(joints)
    hm_w, hm_h = heatmap_size
    target = np.zeros((num_joints, hm_h, hm_w), np.float32)
    weight = _visibility_weight(joints_vis, num_joints)
    if udp:
        stride_x, stride_y = (input_size[0] - 1.0) / (hm_w - 1.0), (input_size[1] - 1.0) / (hm_h - 1.0)
    else:
        stride_x, stride_y = input_size[0] / hm_w, input_size[1] / hm_h
        patch = _gaussian_patch(sigma)
    radius = sigma * 3
    # The official window edges are int(); with its patch that puts the peak on the joint wherever 3 sigma has no
    # fraction or one of at least one half (away from the top and left edge, where int() truncates toward zero:
    # an official quirk, kept). With a fraction below one half (sigma 0.75) it puts every peak a pixel up and
    # left of its joint: there the edges are floored and the patch centred to match, on the joint everywhere.
    edge = math.floor if 0 < radius % 1 < 0.5 else int
    for k in range(num_joints):
        exact_x, exact_y = joints[k, 0] / stride_x, joints[k, 1] / stride_y
        # int() truncates toward zero, not floor (matters for joints left of/above the crop): official quirk.
        mu_x, mu_y = int(exact_x + 0.5), int(exact_y + 0.5)
        left, top = edge(mu_x - radius), edge(mu_y - radius)
        right, bottom = edge(mu_x + radius + 1), edge(mu_y + radius + 1)
        if left >= hm_w or top >= hm_h or right < 0 or bottom < 0:
            weight[k] = 0
            continue
        if weight[k] > 0.5:
            window = np.s_[k, max(0, top):min(bottom, hm_h), max(0, left):min(right, hm_w)]
            if udp:
                xs = np.arange(max(0, left), min(right, hm_w)) - exact_x
                ys = np.arange(max(0, top), min(bottom, hm_h))[:, None] - exact_y
                target[window] = np.exp(-(xs ** 2 + ys ** 2) / (2 * sigma ** 2))
            else:
                target[window] = patch[max(0, -top):min(bottom, hm_h) - top, max(0, -left):min(right, hm_w) - left]
    return target, weight


# ----------------------------------------------------------------------------------------------------------
# COCO-format dataset

def augmentation_defaults(model_name):
    """Training augmentation of each model family's official 256x192 recipe (HRNet yaml / Lite-HRNet config)."""
    common = dict(rot_prob=0.6, half_body_prob=0.3, num_joints_half_body=8, flip_prob=0.5)
    if model_name.startswith("lite_hrnet"):
        return dict(scale_factor=0.25, rot_factor=30, **common)
    if model_name.startswith("hrnet"):
        return dict(scale_factor=0.35, rot_factor=45, **common)
    raise ValueError(f"--model: unknown model family {model_name!r} (expected hrnet_* or lite_hrnet_*)")


def _without_keys(keys, obj):
    for key in keys:
        obj.pop(key, None)
    return obj


def load_json(path, what, drop_keys=()):
    """A JSON file; drop_keys are removed from each object as soon as it is read, so they never pile up in memory
    (a COCO file's segmentation polygons are most of it, and keypoints need none)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_hook=functools.partial(_without_keys, drop_keys) if drop_keys else None)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err})") from None
    except OSError as err:  # e.g. no permission to read it
        raise ValueError(f"{what} {path} cannot be read ({err.strerror or err})") from None


def keypoint_category(coco, ann_file):
    """The keypoint category of a COCO dict (id 1 if several have keypoints)."""
    if not isinstance(coco, dict) or not all(isinstance(coco.get(key), list)
                                             for key in ("images", "annotations", "categories")):
        raise ValueError(f"annotation file {ann_file}: expected a COCO dict with images, annotations, categories")
    categories = [c for c in coco["categories"] if isinstance(c, dict) and c.get("keypoints")]
    if not categories:
        raise ValueError(f"annotation file {ann_file}: no category has a 'keypoints' list "
                         f"(expected a person_keypoints_*.json file)")
    return next((c for c in categories if c.get("id") == 1), categories[0])


JSON_NUMBER_TYPES = {int, float}  # not bool: JSON's true is no coordinate


def finite_numbers(values, count=None):
    """True if values is a list of `count` (any number if None) finite numbers, as JSON gives them. Plain Python:
    ~10x faster than through numpy on the short lists of an annotation file, read at every start."""
    return (isinstance(values, list) and (count is None or len(values) == count)
            and set(map(type, values)) <= JSON_NUMBER_TYPES and math.isfinite(sum(values)))  # NaN/inf spread


def complete_annotations(coco, ann_file, category):
    """Checks the keypoint category's annotations and fills in, in place, what public COCO-format sets leave out, as
    training and pycocotools need it: 'area' from the box (COCO's is the segmentation's), 'iscrowd' 0,
    'num_keypoints' counted, and all-zero 'keypoints' for a person without any (COCO's unlabelled person).
    A box or keypoints that are not numbers are a one-line error naming the file and the annotation id."""
    num_joints = len(category["keypoints"])
    filled = {"area": 0, "iscrowd": 0, "num_keypoints": 0, "keypoints": 0}
    for ann in coco["annotations"]:
        if not isinstance(ann, dict):
            raise ValueError(f"annotation file {ann_file}: an entry of 'annotations' is not a dict: {ann!r:.60}")
        if ann.get("category_id") != category["id"]:
            continue
        where = f"annotation file {ann_file}: annotation {ann.get('id')}"
        box = ann.get("bbox")
        if not finite_numbers(box, 4):
            raise ValueError(f"{where} has 'bbox' {box!r:.80}, expected 4 finite numbers [x, y, w, h]")
        if not ann.get("keypoints"):  # null or []
            ann["keypoints"], ann["num_keypoints"] = [0] * (3 * num_joints), 0
            filled["keypoints"] += 1
        keypoints = ann["keypoints"]
        if not finite_numbers(keypoints):
            raise ValueError(f"{where} has keypoints that are not all finite numbers: {keypoints!r:.80}")
        if len(keypoints) != 3 * num_joints:
            raise ValueError(f"{where} has {len(keypoints)} keypoint values, expected 3*{num_joints}")
        for key in ("area", "iscrowd", "num_keypoints"):
            if key not in ann:
                ann[key] = {"area": float(box[2] * box[3]), "iscrowd": 0,
                            "num_keypoints": sum(v > 0 for v in keypoints[2::3])}[key]
                filled[key] += 1
        if not finite_numbers([ann["area"]]):
            raise ValueError(f"{where} has 'area' {ann['area']!r:.40}, expected a number")
    if any(filled.values()):
        defaults = dict(area="the box's width x height", iscrowd="0", num_keypoints="the labelled joints",
                        keypoints="none labelled")
        warn_once(f"annotation file {ann_file}: filled in " + ", ".join(
            f"{count} missing '{key}' ({defaults[key]})" for key, count in filled.items() if count))
    return coco


class PackedStrings:
    """Many strings as one numpy byte buffer and their offsets: a list of str is one Python object per string, and
    reading one in a forked DataLoader worker writes its reference count, giving the worker its own copy of the
    memory page it sits on. strings[i] gives back the i-th string."""

    def __init__(self, strings):
        encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
        self.offsets = np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64)
        self.buffer = np.frombuffer(b"".join(encoded), np.uint8)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        return self.buffer[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8", "surrogatepass")


def _id_array(ids):
    """COCO's image ids are integers: one int64 array. Other kinds (a few sets use strings) are kept as they are."""
    return np.array(ids, np.int64) if all(type(i) is int for i in ids) else np.array(ids, object)


def _image_positions(coco):
    """{image id: its position in the file's 'images'} (the last entry, should an id repeat)."""
    return {image["id"]: position for position, image in enumerate(coco["images"])}


def _gt_samples(coco, ann_file, num_joints, category_id, aspect_ratio):
    """The training samples of a COCO dict's GT person boxes, as numpy columns (see COCOKeypointDataset);
    returns (columns, number of annotations skipped)."""
    positions = _image_positions(coco)
    by_image = {image_id: [] for image_id in positions}
    for ann in coco["annotations"]:
        if ann.get("category_id") != category_id:
            continue
        if ann.get("image_id") not in by_image:
            raise ValueError(f"annotation file {ann_file}: annotation {ann.get('id')} refers to "
                             f"image {ann.get('image_id')}, which is not in 'images'")
        by_image[ann["image_id"]].append(ann)
    kept, image_ids, image_index, boxes = [], [], [], []
    skipped = {"crowd": 0, "bad_box": 0, "no_keypoints": 0}
    for image_id, anns in by_image.items():  # file order, as the official loader
        image = coco["images"][positions[image_id]]
        width, height = image.get("width", math.inf), image.get("height", math.inf)  # no size: nothing to clip to
        for ann in anns:
            if ann["iscrowd"]:
                skipped["crowd"] += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            # Official cleaning: clip to the image; in-image boxes lose 1 px of width and height (kept as is).
            x1, y1 = max(0, x), max(0, y)
            x2, y2 = min(width - 1, x1 + max(0, w - 1)), min(height - 1, y1 + max(0, h - 1))
            if not (ann["area"] > 0 and x2 >= x1 and y2 >= y1):
                skipped["bad_box"] += 1
                continue
            if max(ann["keypoints"]) == 0:
                skipped["no_keypoints"] += 1
                continue
            kept.append(ann)
            image_ids.append(image_id)
            image_index.append(positions[image_id])
            boxes.append([x1, y1, x2 - x1, y2 - y1])
    joints = np.array([ann["keypoints"] for ann in kept], np.float32).reshape(len(kept), num_joints, 3)
    joints[:, :, 2] = np.minimum(joints[:, :, 2], 1)  # 1 = labelled (visible or occluded), 0 = not labelled
    return _sample_columns(image_ids, image_index, boxes, aspect_ratio, np.ones(len(kept)), joints,
                           [float(ann["area"]) for ann in kept]), sum(skipped.values())


def _sample_columns(image_ids, image_index, boxes, aspect_ratio, scores, joints, areas):
    """The numpy columns of COCOKeypointDataset from per-sample lists: boxes [x, y, w, h] become centers and
    scales (box_to_center_scale)."""
    centers, scales = box_to_center_scale(np.array(boxes, np.float64).reshape(-1, 4), aspect_ratio)
    return dict(image_ids=_id_array(image_ids), image_index=np.array(image_index, np.int32), centers=centers,
                scales=scales, scores=np.asarray(scores, np.float64), joints=joints,
                areas=np.asarray(areas, np.float64))


def _detection_samples(det_file, coco, num_joints, category_id, aspect_ratio, score_thr):
    """The samples of a detection-results file's person boxes on a COCO dict's images, as numpy columns (no
    joints: evaluation only); returns (columns, number of boxes skipped)."""
    detections = load_json(det_file, "detection file")
    if not isinstance(detections, list) or not detections:
        raise ValueError(f"detection file {det_file}: expected a non-empty JSON list of "
                         f"{{image_id, category_id, bbox, score}}")
    positions = _image_positions(coco)
    unknown = {d.get("image_id") for d in detections} - set(positions)
    if unknown:
        raise ValueError(f"detection file {det_file}: {len(unknown)} image ids (e.g. {sorted(map(str, unknown))[0]}) "
                         f"are not in the annotation file; do the two files belong to the same split?")
    kept, skipped, empty = [], 0, 0
    for det in detections:
        if det.get("category_id") != category_id or det["score"] < score_thr:
            skipped += 1
            continue
        box = det.get("bbox")
        if not finite_numbers(box, 4):
            raise ValueError(f"detection file {det_file}: a box of image {det['image_id']} is {det.get('bbox')!r:.60}, "
                             f"expected 4 finite numbers [x, y, w, h]")
        if box[2] < 1 or box[3] < 1:  # no person in it; predict.py drops them too
            empty += 1
            continue
        kept.append(det)
    if empty:
        warn_once(f"detection file {det_file}: skipped {empty} boxes less than 1 px wide or high")
    if not kept:
        raise ValueError(f"detection file {det_file}: no person boxes with score >= {score_thr}")
    boxes = np.array([det["bbox"] for det in kept], np.float64)
    return _sample_columns([det["image_id"] for det in kept], [positions[det["image_id"]] for det in kept], boxes,
                           aspect_ratio, np.array([float(det["score"]) for det in kept]),
                           np.zeros((len(kept), num_joints, 3), np.float32), boxes[:, 2] * boxes[:, 3]), skipped + empty


LARGE_ANNOTATION_FILE = 32 << 20  # bytes


MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform.startswith("linux") else None


def release_freed_memory():
    """Hands the pages of freed objects back to the system: glibc's malloc keeps them for reuse unless asked, so
    a parsed annotation file would stay in the process's resident memory (and in every forked worker's)."""
    if MALLOC_TRIM:
        MALLOC_TRIM(0)


def _half_body_box(rng, joints, visible, is_upper, aspect_ratio):
    """Center/scale of the upper or lower body alone (HRNet's half-body augmentation), or None."""
    upper, lower = joints[visible & is_upper], joints[visible & ~is_upper]
    # Official quirk: randn() < 0.5 (not rand()), so the upper body is chosen ~69 % of the time.
    if rng.standard_normal() < 0.5 and len(upper) > 2:
        selected = upper
    else:
        selected = lower if len(lower) > 2 else upper
    if len(selected) < 2:
        return None
    selected = selected.astype(np.float32)
    w, h = selected.max(axis=0) - selected.min(axis=0)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return selected.mean(axis=0), np.array([w / PIXEL_STD, h / PIXEL_STD], np.float32) * 1.5


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent():
    """A worker_init_fn for paddle.io.DataLoader: its worker processes end as soon as the process that started them
    dies. On their own they outlive a killed parent: they notice it only when their queue of batches runs dry, and
    then wait forever to flush their last batch into a pipe nobody reads, each holding its memory. Linux's
    parent-death signal ends them at once (elsewhere the workers keep Paddle's own check)."""
    return functools.partial(_end_with_parent, os.getpid())


def collate_releasing_memory(samples):
    """Paddle's batching, after handing the previous batch's freed buffers back to the system in a worker: glibc
    keeps them (MBs each) and reuses them in pieces, so each worker's private memory crept up by 10-25 MB over
    the first ~150 batches (data.py scale-bench)."""
    if paddle.io.get_worker_info() is not None:
        release_freed_memory()
    return default_collate_fn(samples)


def data_loader(dataset, workers, **options):
    """A paddle.io.DataLoader of dataset with this project's worker setup: workers end with the process that
    started them (exit_with_parent) and give freed batch memory back (collate_releasing_memory). Read it to
    the end: a multi-worker loader left half-read keeps its workers and a blocked reader thread alive."""
    return paddle.io.DataLoader(dataset, num_workers=workers, worker_init_fn=exit_with_parent(),
                                collate_fn=collate_releasing_memory, **options)


def _end_with_parent(parent_pid, worker_id):
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


class COCOKeypointDataset(paddle.io.Dataset):
    """Top-down samples from a COCO-format keypoint file: one sample per GT person box or detection box.
    __getitem__ returns (image (3,H,W), target (K,h,w), target_weight (K,1), index); an unreadable image gives
    zeros and index -(i+1), so one bad file cannot kill a long run (the loops count and report these).

    Sample i is record(i): image_ids[i], image_file(i), centers[i], scales[i], scores[i], joints[i], areas[i].
    Each field is one numpy array over all N samples, not a dict per sample (as the official code keeps them): a
    forked DataLoader worker reading a dict or its small arrays writes their reference counts, and with them
    copies the memory pages they share with the main process, until, over an epoch, every worker holds its own
    copy of the dataset. Reading a row of a numpy array writes nothing into the array.
        image_ids (N,) int64       the COCO image id
        image_index (N,) int32     which of image_files (PackedStrings: the file's images, in file order)
        centers, scales (N, 2)     float32 box center and size / 200 px (box_to_center_scale)
        joints (N, K, 3) float32   x, y, labelled (1) or not (0); zeros for detection boxes
        scores, areas (N,)         float64 box score (1 for GT boxes) and area (COCO's, or the box's)
    """

    def __init__(self, ann_file, image_dir, input_size, train, boxes="gt", det_score_thr=0.0, sigma=None, udp=False,
                 scale_factor=0.35, rot_factor=45, rot_prob=0.6, half_body_prob=0.3, num_joints_half_body=8,
                 flip_prob=0.5, sigmas_file=None, flip_pairs=None, seed=0):
        super().__init__()
        self.ann_file, self.image_dir = ann_file, image_dir
        self.input_size = size_wh(input_size)
        self.heatmap_size = (self.input_size[0] // HEATMAP_STRIDE, self.input_size[1] // HEATMAP_STRIDE)
        self.sigma = default_sigma(self.input_size) if sigma is None else float(sigma)
        self.train, self.udp, self.seed, self.epoch = bool(train), bool(udp), int(seed), 0
        self.scale_factor, self.rot_factor, self.rot_prob = scale_factor, rot_factor, rot_prob
        self.half_body_prob, self.num_joints_half_body, self.flip_prob = half_body_prob, num_joints_half_body, flip_prob
        start = time.time()
        coco = load_json(ann_file, "annotation file", drop_keys=("segmentation",))
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"image folder {image_dir} not found (the images of {ann_file})")
        category = keypoint_category(coco, ann_file)
        self.info = keypoint_info_from_category(category, sigmas_file, flip_pairs)
        if not self.info.flip:
            self.flip_prob = 0.0
        aspect_ratio = self.input_size[0] / self.input_size[1]
        source = ann_file if boxes == "gt" else resolve_path_or_url(boxes, what="detection file")
        num_joints = self.info.num_joints
        try:
            complete_annotations(coco, ann_file, category)
            if boxes == "gt":
                columns, self.num_skipped = _gt_samples(coco, ann_file, num_joints, category["id"], aspect_ratio)
            else:
                columns, self.num_skipped = _detection_samples(source, coco, num_joints, category["id"], aspect_ratio,
                                                               det_score_thr)
            self.image_files = PackedStrings([os.path.join(image_dir, image["file_name"]) for image in coco["images"]])
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(f"{source}: malformed entry ({type(err).__name__}: {err})") from None
        del coco, category
        if os.path.getsize(ann_file) > LARGE_ANNOTATION_FILE:  # a small file leaves little to give back
            release_freed_memory()
        self.image_ids, self.image_index = columns["image_ids"], columns["image_index"]
        self.centers, self.scales, self.joints = columns["centers"], columns["scales"], columns["joints"]
        self.scores, self.areas = columns["scores"], columns["areas"]
        if not len(self):
            raise ValueError(f"annotation file {ann_file}: no usable person instances "
                             f"(non-crowd, with keypoints and a valid box)")
        self._flip_order = np.arange(num_joints)
        for left, right in self.info.flip_pairs:
            self._flip_order[left], self._flip_order[right] = right, left
        self._is_upper = np.isin(np.arange(num_joints), self.info.upper_body_ids)
        print(f"{os.path.basename(ann_file)}: {len(self)} samples from "
              f"{'GT boxes' if boxes == 'gt' else 'detections'} ({self.num_skipped} skipped) "
              f"in {time.time() - start:.1f}s", file=sys.stderr)

    def __len__(self):
        return len(self.centers)

    def image_file(self, index):
        return self.image_files[self.image_index[index]]

    def record(self, index):
        """Sample index as one dict: image_id, image_file, center, scale, score, joints, area (copies: changing
        them leaves the dataset as it is)."""
        return dict(image_id=self.image_ids.item(index), image_file=self.image_file(index),
                    center=self.centers[index].copy(), scale=self.scales[index].copy(),
                    score=float(self.scores[index]), joints=self.joints[index].copy(), area=float(self.areas[index]))

    def set_epoch(self, epoch):
        """Call before building each epoch's iterator: workers copy the dataset when they start."""
        self.epoch = int(epoch)

    def _augment(self, rng, joints, visible, center, scale):
        """HRNet's order: half-body, scale, rotation, flip. Returns (center, scale, rotation, flip)."""
        if visible.sum() > self.num_joints_half_body and rng.random() < self.half_body_prob:
            half_body = _half_body_box(rng, joints, visible, self._is_upper, self.input_size[0] / self.input_size[1])
            if half_body is not None:
                center, scale = half_body
        sf, rf = self.scale_factor, self.rot_factor
        scale = scale * np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf)
        rotation = np.clip(rng.standard_normal() * rf, -rf * 2, rf * 2) if rng.random() < self.rot_prob else 0.0
        return center, scale, float(rotation), rng.random() < self.flip_prob

    def __getitem__(self, index):
        num_joints, (width, height), heatmap_size = self.info.num_joints, self.input_size, self.heatmap_size
        try:
            image = read_image_bgr(self.image_file(index))
        except (FileNotFoundError, ValueError) as err:
            warnings.warn(f"skipping sample {index}: {err}")
            return (np.zeros((3, height, width), np.float32),
                    np.zeros((num_joints, heatmap_size[1], heatmap_size[0]), np.float32),
                    np.zeros((num_joints, 1), np.float32), np.array(-(index + 1), np.int64))
        joints = self.joints[index, :, :2].astype(np.float64)
        vis = self.joints[index, :, 2].copy()
        center, scale, rotation, flip = self.centers[index].copy(), self.scales[index].copy(), 0.0, False
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))  # same sample with any number of workers
            center, scale, rotation, flip = self._augment(rng, joints, vis > 0, center, scale)
        image_width = image.shape[1]
        if flip:
            joints[:, 0] = image_width - joints[:, 0] - 1
            joints, vis = joints[self._flip_order], vis[self._flip_order]
            joints *= vis[:, None]
            center = np.array([image_width - center[0] - 1, center[1]], np.float32)
        matrix = _crop_matrix(center, scale, rotation, self.input_size, self.udp)
        image_matrix = matrix
        if flip:  # fold the mirror x -> w-1-x into the warp instead of copying the full image
            image_matrix = matrix @ np.array([[-1.0, 0.0, image_width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        crop = cv2.warpAffine(image, image_matrix, (width, height), flags=cv2.INTER_LINEAR)
        crop = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)  # after the warp: 8x fewer pixels than the full image
        labelled = vis > 0
        joints[labelled] = affine_transform(joints[labelled], matrix)
        target, weight = generate_target(joints, vis, self.input_size, heatmap_size, self.sigma, self.udp)
        return normalize_image(crop), target, weight, np.array(index, np.int64)


# ----------------------------------------------------------------------------------------------------------
# Synthetic stick-figure dataset: real COCO format, 17 COCO keypoints, learnable in minutes on a CPU

def _bgr(hue_deg, saturation, value):
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360) / 360, saturation, value)
    return int(b * 255), int(g * 255), int(r * 255)


def _direction(angle_deg):
    """Unit vector on screen: 0 = up, 90 = right (y points down)."""
    a = math.radians(angle_deg)
    return np.array([math.sin(a), -math.cos(a)])


def _stick_figure_pose(rng, body_height):
    """17 COCO joints of a front-facing figure (its left side on the image's right), pelvis at the origin,
    with random but plausible lean, head tilt and limb angles. Returns (joints (17,2), head centre, head radius)."""
    H, joints = body_height, np.zeros((17, 2))
    lean = float(np.clip(rng.normal(0, 8), -20, 20))
    up, right = _direction(lean), _direction(lean + 90)
    neck = 0.30 * H * up
    head_tilt = lean + rng.normal(0, 10)
    head_up, head_right = _direction(head_tilt), _direction(head_tilt + 90)
    head_radius = 0.08 * H
    head = neck + 0.12 * H * head_up
    yaw = rng.uniform(-0.35, 0.35)  # face turned left/right: the features slide sideways
    for k, (u, v) in enumerate([(yaw, -0.15), (0.38 + yaw, 0.25), (-0.38 + yaw, 0.25),
                                (0.95 + 0.2 * yaw, 0.05), (-0.95 + 0.2 * yaw, 0.05)]):
        joints[k] = head + head_radius * (u * head_right + v * head_up)
    for side, (sho, elb, wri, hip, kne, ank) in ((1, (5, 7, 9, 11, 13, 15)), (-1, (6, 8, 10, 12, 14, 16))):
        joints[sho] = neck + side * 0.11 * H * right - 0.02 * H * up
        upper_arm = lean + 180 - side * rng.uniform(-20, 170)  # 0 = hanging, 90 = sideways, 170 = raised
        joints[elb] = joints[sho] + 0.16 * H * _direction(upper_arm)
        joints[wri] = joints[elb] + 0.14 * H * _direction(upper_arm + rng.choice([-1, 1]) * rng.uniform(0, 140))
        joints[hip] = side * 0.08 * H * right
        thigh = lean + 180 - side * rng.uniform(-10, 45)
        joints[kne] = joints[hip] + 0.24 * H * _direction(thigh)
        joints[ank] = joints[kne] + 0.23 * H * _direction(thigh + side * rng.uniform(-25, 70))
    return joints, head, head_radius


def _synth_background(rng, width, height):
    """Low-contrast clutter: a gradient, soft blobs, thin lines and noise, in muted colours."""
    c0, c1 = (np.array(_bgr(rng.uniform(0, 360), rng.uniform(0, .35), rng.uniform(.25, .75))) for _ in range(2))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * np.arange(width)[None, :] / width + np.sin(angle) * np.arange(height)[:, None] / height)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    image = (c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]).astype(np.uint8)
    blobs = image.copy()
    for _ in range(rng.integers(4, 12)):
        center = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        axes = (int(rng.uniform(.05, .3) * width), int(rng.uniform(.05, .3) * height))
        cv2.ellipse(blobs, center, axes, rng.uniform(0, 180), 0, 360,
                    _bgr(rng.uniform(0, 360), rng.uniform(0, .4), rng.uniform(.2, .8)), -1)
    image = cv2.addWeighted(cv2.GaussianBlur(blobs, (0, 0), 3), 0.5, image, 0.5, 0)
    for _ in range(rng.integers(2, 8)):
        points = rng.uniform(0, 1, 4) * [width, height, width, height]
        cv2.line(image, (int(points[0]), int(points[1])), (int(points[2]), int(points[3])),
                 _bgr(rng.uniform(0, 360), rng.uniform(0, .3), rng.uniform(.2, .8)), int(rng.integers(1, 4)), cv2.LINE_AA)
    return image


def _draw_stick_figure(rng, canvases, joints, head, head_radius, body_height):
    """Draws one figure on each (canvas, coloured) pair; coloured=False draws a 255 mask of the same shapes.
    Left limbs are warm (red..yellow), right limbs cool (cyan..violet), so mirrored poses stay distinguishable;
    every limb joint gets a dark disc with a light centre so limb ends are well defined."""
    thick = max(2, int(round(rng.uniform(0.035, 0.055) * body_height)))
    left_hue, right_hue = rng.uniform(0, 45), rng.uniform(190, 260)
    sat, val = rng.uniform(.75, 1), rng.uniform(.8, 1)
    segments, joint_colours = [], {}  # (a, b, colour); joint -> colour of its disc
    for hue, chains in ((left_hue, ((5, 7, 9), (11, 13, 15))), (right_hue, ((6, 8, 10), (12, 14, 16)))):
        for is_leg, (a, b, c) in enumerate(chains):
            v = val * (0.8 if is_leg else 1.0)
            upper, lower = _bgr(hue, sat, v), _bgr(hue + 12, sat * 0.85, min(1.0, v * 1.1))
            segments += [(a, b, upper), (b, c, lower)]
            joint_colours.update({a: upper, b: lower, c: lower})
    legs, arms = [seg for seg in segments if seg[0] >= 11], [seg for seg in segments if seg[0] < 11]
    if rng.random() < 0.5:
        arms = arms[2:] + arms[:2]  # which arm is in front
    torso = _bgr(rng.uniform(0, 360), rng.uniform(.3, .7), rng.uniform(.4, .85))
    skin = _bgr(rng.uniform(15, 35), rng.uniform(.25, .6), rng.uniform(.6, 1))
    face = [(30, 30, 120), _bgr(left_hue, 1, .6), _bgr(right_hue, 1, .6), _bgr(left_hue, sat, val), _bgr(right_hue, sat, val)]
    pts = [tuple(int(v) for v in p) for p in joints]
    neck, head = tuple(int(v) for v in (joints[5] + joints[6]) / 2), tuple(int(round(v)) for v in head)
    r = max(3, int(round(head_radius)))
    for canvas, coloured in canvases:
        def paint(colour):
            return colour if coloured else 255
        for a, b, colour in legs:
            cv2.line(canvas, pts[a], pts[b], paint(colour), thick, cv2.LINE_AA)
        cv2.fillConvexPoly(canvas, np.array([pts[5], pts[6], pts[12], pts[11]]), paint(torso), cv2.LINE_AA)
        cv2.line(canvas, neck, head, paint(torso), thick, cv2.LINE_AA)
        for a, b, colour in arms:
            cv2.line(canvas, pts[a], pts[b], paint(colour), thick, cv2.LINE_AA)
        cv2.circle(canvas, head, r, paint(skin), -1, cv2.LINE_AA)
        cv2.circle(canvas, head, r, paint((40, 40, 40)), 1, cv2.LINE_AA)
        for k in range(5):  # nose, eyes (small dots), ears (larger, on the head's outline)
            cv2.circle(canvas, pts[k], max(2, r // 5) if k < 3 else max(2, r // 3), paint(face[k]), -1, cv2.LINE_AA)
        for k in range(5, 17):
            colour = np.array(joint_colours[k])
            cv2.circle(canvas, pts[k], max(2, round(0.8 * thick)), paint(tuple(int(v) for v in colour * 0.4)), -1, cv2.LINE_AA)
            cv2.circle(canvas, pts[k], max(1, round(0.4 * thick)), paint(tuple(int(v) for v in colour * 0.3 + 178)), -1, cv2.LINE_AA)


def _synth_image(task):
    """One synthetic image (written as JPEG) and its annotations; deterministic in its seed words."""
    path, seed_words, (width, height), exact_noise = task
    rng = np.random.default_rng(seed_words)
    image = _synth_background(rng, width, height)
    count = int(rng.choice([1, 2, 3, 4], p=[.3, .3, .25, .15]))
    slots = rng.permutation(count)
    figures = []  # (joints, head radius, body height, box)
    for attempt in range(12 * count):
        if len(figures) == count:
            break
        body_height = rng.uniform(*{1: (.6, .95), 2: (.5, .85)}.get(count, (.4, .7))) * height
        joints, head, head_radius = _stick_figure_pose(rng, body_height)
        low, high = joints.min(axis=0) - head_radius, joints.max(axis=0) + head_radius
        slot_x = (slots[len(figures)] + 0.5) / count * width + rng.normal(0, 0.06 * width)
        bottom = rng.uniform(1.0, 1.25) * height if rng.random() < 0.15 else rng.uniform(0.8, 1.0) * height
        offset = np.array([slot_x - (low[0] + high[0]) / 2, bottom - high[1]])
        joints, head, low, high = joints + offset, head + offset, low + offset, high + offset
        inside = (joints[:, 0] >= 0) & (joints[:, 0] <= width - 1) & (joints[:, 1] >= 0) & (joints[:, 1] <= height - 1)
        overlap = max([box_iou((*low, *high), f[4]) for f in figures], default=0.0)
        if inside.sum() >= 6 and overlap < 0.3:
            figures.append((np.round(joints), head, head_radius, body_height, (*low, *high)))
    masks = []
    for joints, head, head_radius, body_height, _ in figures:
        masks.append(np.zeros((height, width), np.uint8))
        _draw_stick_figure(rng, [(image, True), (masks[-1], False)], joints, head, head_radius, body_height)
    occluders = np.zeros((height, width), np.uint8)
    for joints, _, _, body_height, _ in figures:
        if rng.random() < 0.3:  # a box in front of the figure: the joints under it become "labelled, not visible"
            cx, cy = joints[rng.integers(5, 17)] + rng.normal(0, 0.05 * body_height, 2)
            w, h = rng.uniform(.2, .4) * body_height, rng.uniform(.15, .35) * body_height
            corners = (int(cx - w / 2), int(cy - h / 2)), (int(cx + w / 2), int(cy + h / 2))
            cv2.rectangle(image, *corners, _bgr(rng.uniform(0, 360), rng.uniform(0, .5), rng.uniform(.2, .9)), -1)
            cv2.rectangle(occluders, *corners, 255, -1)
    if exact_noise:  # val: the float64 noise its images were first made with, so that AP figures stay comparable
        noise = rng.normal(0, 4, image.shape)
    else:  # train: float32 noise, a third of the image's time less (the big float64 array was most of it)
        noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(4)
    cv2.imwrite(path, np.clip(image + noise, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    annotations = []
    for i, (joints, *_rest) in enumerate(figures):
        in_front = np.maximum.reduce([occluders] + masks[i + 1:])
        keypoints = []
        for x, y in joints.astype(int):
            if 0 <= x < width and 0 <= y < height:
                keypoints += [int(x), int(y), 1 if in_front[y, x] else 2]
            else:
                keypoints += [0, 0, 0]  # truncated: outside the image, not labelled (COCO convention)
        x, y, w, h = cv2.boundingRect(masks[i])
        # Box area stands in for COCO's segmentation area (a stick figure's own pixel count would make OKS
        # far stricter than on real people of the same size).
        annotations.append(dict(keypoints=keypoints, num_keypoints=sum(v > 0 for v in keypoints[2::3]),
                                bbox=[x, y, w, h], area=float(w * h), iscrowd=0, category_id=1))
    detections = []
    for ann in annotations:  # a fake person detector: jittered true boxes ...
        x, y, w, h = ann["bbox"]
        dx0, dy0, dx1, dy1 = rng.normal(0, 0.05, 4) * [w, h, w, h]
        detections.append(dict(category_id=1, bbox=[x + dx0, y + dy0, max(1.0, w + dx1 - dx0), max(1.0, h + dy1 - dy0)],
                               score=float(rng.uniform(0.7, 1.0))))
    if rng.random() < 0.4:  # ... and a low-scoring false positive
        w, h = rng.uniform(0.1, 0.4) * width, rng.uniform(0.2, 0.6) * height
        detections.append(dict(category_id=1, bbox=[rng.uniform(0, width - w), rng.uniform(0, height - h), w, h],
                               score=float(rng.uniform(0.05, 0.5))))
    return annotations, detections


def box_iou(a, b):
    """Intersection over union of two boxes given as x1, y1, x2, y2."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 0.0


# the built-in set's training images: train.py's teaching recipe passes over them several times, which scored
# as well as one pass over as many crops of more images (README, Training) and takes less time to make
SYNTHETIC_TRAIN_IMAGES = 600


def make_synthetic_dataset(out_dir, num_train=SYNTHETIC_TRAIN_IMAGES, num_val=200, seed=0, image_size=(320, 240),
                           workers=None):
    """Writes a COCO-format keypoint dataset of stick figures (1-4 per image, occlusion, truncation):
    annotations/person_keypoints_{train,val}2017.json, {train,val}2017/*.jpg, and a detection-results file
    for val. Identical output for the same arguments, whatever the number of worker processes."""
    width, height = (int(v) for v in image_size)
    if width < 64 or height < 64 or num_train < 0 or num_val < 0:
        raise ValueError(f"synthetic dataset: need --size of at least 64x64 and non-negative counts, "
                         f"got size {width}x{height}, train {num_train}, val {num_val}")
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "person_detection_results"), exist_ok=True)
    for split_index, (split, count, first_id) in enumerate((("train", num_train, 1), ("val", num_val, 1_000_001))):
        image_dir = os.path.join(out_dir, f"{split}2017")
        os.makedirs(image_dir, exist_ok=True)
        image_ids = [first_id + i for i in range(count)]
        tasks = [(os.path.join(image_dir, f"{image_id:012d}.jpg"), (seed, split_index, i), (width, height),
                  split == "val") for i, image_id in enumerate(image_ids)]
        update = progress_printer(f"synth {split}", count, "images")
        results = []
        pool = Pool(workers or min(os.cpu_count() or 1, 8))
        for result in pool.imap(_synth_image, tasks, chunksize=8):
            results.append(result)
            update(len(results))
        pool.close()  # let the workers exit by themselves: a terminate() makes Paddle's signal handler shout
        pool.join()
        update(len(results), final=True)
        images, annotations, detections = [], [], []
        for image_id, (anns, dets) in zip(image_ids, results):
            images.append(dict(id=image_id, file_name=f"{image_id:012d}.jpg", width=width, height=height))
            annotations += [dict(ann, id=len(annotations) + k + 1, image_id=image_id) for k, ann in enumerate(anns)]
            detections += [dict(det, image_id=image_id) for det in dets]
        coco = dict(info=dict(description="hrnet-paddle synthetic stick figures",
                              params=dict(seed=seed, image_size=[width, height], count=count)),
                    licenses=[], images=images, annotations=annotations, categories=[COCO_PERSON_CATEGORY])
        with open(os.path.join(out_dir, "annotations", f"person_keypoints_{split}2017.json"), "w") as f:
            json.dump(coco, f)
        if split == "val":
            with open(os.path.join(out_dir, "person_detection_results",
                                   "COCO_val2017_detections_AP_H_56_person.json"), "w") as f:
                json.dump(detections, f)
    return out_dir


def make_synthetic_video(path, num_frames=100, num_people=3, size=(320, 240), fps=25, seed=0, walk=(0.1, 0.9),
                         speed=(1, 4), boxes_path=None):
    """Writes an mp4 of stick figures walking to and fro across a still background, crossing one another, and
    returns the truth: joints (frames, people, 17, 2) in pixels as drawn, boxes (frames, people, 4) as x, y, w, h
    (the figure's extent: joints and head) and inside (frames, people), whether half of the box is in the frame.
    Each figure keeps its pose and colours; its pelvis walks between walk[0] and walk[1] times the width (outside
    0..1 it leaves the frame and comes back) at speed[0] to speed[1] px a frame, bobbing (unless still).
    boxes_path: also write the boxes that are inside as a COCO detection-results file whose image_id is the frame
    index (predict.py --boxes)."""
    width, height = (int(v) for v in size)
    rng = np.random.default_rng(seed)
    background = _synth_background(rng, width, height)
    figures = []  # (joints about the pelvis, head offset, head radius, body height, start x, pace, baseline y)
    for i in range(num_people):
        body_height = rng.uniform(0.55, 0.75) * height
        joints, head, head_radius = _stick_figure_pose(rng, body_height)
        start = rng.uniform(walk[0], walk[1]) * width
        pace = rng.uniform(*speed) * (1 if i % 2 == 0 else -1)
        baseline = rng.uniform(0.88, 0.97) * height - joints[:, 1].max()
        figures.append((joints, head, head_radius, body_height, start, pace, baseline))
    all_joints = np.zeros((num_frames, num_people, 17, 2))
    boxes = np.zeros((num_frames, num_people, 4))
    low_x, span = walk[0] * width, (walk[1] - walk[0]) * width
    with atomic_output(path) as tmp:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise ValueError(f"{path}: OpenCV cannot write an mp4 video there")
        for t in range(num_frames):
            image = background.copy()
            for i, (joints, head, head_radius, body_height, start, pace, baseline) in enumerate(figures):
                walked = (start - low_x + pace * t) % (2 * span)  # to and fro between the two ends
                x = low_x + (walked if walked < span else 2 * span - walked)
                offset = np.array([x, baseline + (pace != 0) * 0.01 * body_height * math.sin(0.3 * t + i)])
                all_joints[t, i] = np.round(joints + offset)
                low = np.minimum(all_joints[t, i].min(axis=0), head + offset - head_radius)
                high = np.maximum(all_joints[t, i].max(axis=0), head + offset + head_radius)
                boxes[t, i] = [*low, *(high - low)]
                # the same seed every frame: the same colours and line widths
                _draw_stick_figure(np.random.default_rng((seed, i)), [(image, True)], all_joints[t, i],
                                   head + offset, head_radius, body_height)
            writer.write(image)
        writer.release()
    clipped = np.clip(boxes[..., :2] + boxes[..., 2:], 0, [width, height]) - np.clip(boxes[..., :2], 0, [width, height])
    inside = clipped.prod(axis=-1) >= 0.5 * boxes[..., 2:].prod(axis=-1)
    if boxes_path:
        write_json_atomically([dict(image_id=int(t), category_id=COCO_PERSON_CATEGORY["id"], score=1.0,
                                    bbox=[round(float(v), 2) for v in boxes[t, i]])
                               for t, i in zip(*np.nonzero(inside))], boxes_path)
    return dict(joints=all_joints, boxes=boxes, inside=inside)


# ----------------------------------------------------------------------------------------------------------
# A COCO-sized annotation file from the repository's own images, and the memory a dataset costs (data.py scale-bench)

# COCO train2017: 64,115 images show people; HRNet's cleaning keeps 149,813 person instances as training samples.
COCO_TRAIN_PERSON_IMAGES, COCO_TRAIN_INSTANCES = 64115, 149813


def make_coco_scale_file(out_dir, num_images=COCO_TRAIN_PERSON_IMAGES, num_instances=COCO_TRAIN_INSTANCES):
    """Writes out_dir/annotations/person_keypoints_train2017.json as large as COCO train2017's people, and copies
    the repository's COCO photos (assets/coco_mini_train, assets/coco_tiny) into out_dir/train2017: their usable
    annotations (segmentation and all) repeated with new ids, spread over num_images image entries, each entry
    one of the same few photos under a new id. Every annotation is a usable training sample."""
    assets = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
    image_dir = os.path.join(out_dir, "train2017")
    os.makedirs(image_dir, exist_ok=True)
    photos, people = [], []  # template image dicts; (index of its photo, annotation)
    for split_dir, split in (("coco_mini_train", "train2017"), ("coco_tiny", "val2017")):
        coco = load_json(os.path.join(assets, split_dir, "annotations", f"person_keypoints_{split}.json"),
                         "annotation file")
        for image in coco["images"]:
            anns = [a for a in coco["annotations"]
                    if a["image_id"] == image["id"] and not a["iscrowd"] and a["num_keypoints"] > 0]
            if anns:
                shutil.copyfile(os.path.join(assets, split_dir, split, image["file_name"]),
                                os.path.join(image_dir, image["file_name"]))
                people += [(len(photos), ann) for ann in anns]
                photos.append(image)
    if num_images < len(photos):
        raise ValueError(f"a COCO-sized file needs at least {len(photos)} images, one per photo of assets/")
    entries = [list(range(p, num_images, len(photos))) for p in range(len(photos))]  # image ids - 1 of photo p
    used = [0] * len(photos)
    images = [dict(photos[e % len(photos)], id=e + 1) for e in range(num_images)]
    annotations = []
    for k in range(num_instances):
        photo, ann = people[k % len(people)]
        annotations.append(dict(ann, id=k + 1, image_id=entries[photo][used[photo] % len(entries[photo])] + 1))
        used[photo] += 1
    coco = dict(info=dict(description=f"COCO-sized file of {num_instances} copies of assets/ annotations"),
                licenses=[], images=images, annotations=annotations, categories=[COCO_PERSON_CATEGORY])
    write_json_atomically(coco, os.path.join(out_dir, "annotations", "person_keypoints_train2017.json"))
    return out_dir


def process_memory_mb(pid="self"):
    """Memory of a process in MB, from Linux's /proc/PID: Rss, Pss and Private_Dirty summed over its mappings but
    the /dev/shm files that DataLoader workers hand batches over in (a batch counts as its worker's private memory
    until the main process maps it, so they come and go with the batches in flight), and VmHWM, the peak resident
    memory."""
    memory, counted = {"Rss": 0.0, "Pss": 0.0, "Private_Dirty": 0.0}, True
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if not fields[0].endswith(":"):  # a mapping's first line: address range, ..., path
                counted = not (len(fields) > 5 and fields[5].startswith("/dev/shm/"))
            elif counted and fields[0][:-1] in memory:
                memory[fields[0][:-1]] += int(fields[1]) / 1024
    with open(f"/proc/{pid}/status") as f:
        memory["VmHWM"] = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    return memory


def _cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        return sum(int(v) for v in f.read().rsplit(")", 1)[1].split()[11:13])  # utime + stime


def idle_memory_mb(pids, window=1.0, patience=60):
    """process_memory_mb of each process once none of them has used CPU for `window` seconds (or after `patience`
    windows): DataLoader workers whose batches wait in the prefetch queue, holding no half-made batch."""
    for _ in range(patience):
        before = {pid: _cpu_ticks(pid) for pid in pids}
        time.sleep(window)
        if all(_cpu_ticks(pid) - ticks <= 1 for pid, ticks in before.items()):
            break
    return {pid: process_memory_mb(pid) for pid in pids}


def child_pids():
    """The processes this one started that are still running (a DataLoader's workers)."""
    pids = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids += [int(pid) for pid in f.read().split()]
    return pids


# ----------------------------------------------------------------------------------------------------------
# Downloads: resumable (HTTP Range on a .part file), verified, renamed into place only when complete

def file_digest(path, algorithm="sha256"):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def download_file(url, dest, expected_size=None, md5=None, retries=5, timeout=60, sha256=None):
    if os.path.exists(dest) and (expected_size is None or os.path.getsize(dest) == expected_size):
        return dest  # only a verified download is ever renamed to dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part, total, error, update = dest + ".part", expected_size, None, None
    for attempt in range(retries + 1):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if total is not None and have >= total:
            break
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status != 206:
                    have = 0  # the server ignored the Range header: start over
                if total is None and response.headers.get("Content-Length") is not None:
                    total = have + int(response.headers["Content-Length"])
                update = update or progress_printer(os.path.basename(dest), total, "MB", 1e6, start_done=have)
                with open(part, "ab" if have else "wb") as f:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        have += len(chunk)
                        update(have)
            if total is None or have >= total:
                break
            error = f"connection closed at {have} of {total} bytes"
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:
                break  # nothing left to fetch
            if 400 <= err.code < 500:
                raise ConnectionError(f"{url}: HTTP {err.code} {err.reason}") from None
            error = f"HTTP {err.code}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:  # dropped connections, timeouts
            error = str(err)
        if attempt < retries:
            print(f"\n{url}: {error}; resuming (attempt {attempt + 2} of {retries + 1})", file=sys.stderr)
            time.sleep(min(2 ** attempt, 30))
    else:
        resumable = f"; run again to resume from {part}" if os.path.exists(part) else ""
        raise ConnectionError(f"{url}: download failed after {retries + 1} attempts ({error}){resumable}")
    size = os.path.getsize(part)
    if update:
        update(size, final=True)
    if total is not None and size != total:
        os.remove(part)
        raise ValueError(f"{dest}: got {size} bytes, expected {total}; the bad download was deleted, run again")
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        got = file_digest(part, algorithm)
        if got != expected.lower():
            os.remove(part)
            raise ValueError(f"{dest}: {algorithm.upper()} {got} does not match the expected {expected}; "
                             f"the download (corrupt, or not the expected file) was deleted")
    os.replace(part, dest)
    return dest


def download_coco(root, what=("train", "val", "annotations"), base_url=COCO_BASE_URL, files=COCO_FILES):
    """Official COCO 2017 zips -> root/{train2017,val2017,annotations}; a marker per item makes reruns free."""
    for name in what:
        if name not in files:
            raise ValueError(f"--what: unknown item {name!r}, expected some of {','.join(files)}")
    os.makedirs(root, exist_ok=True)
    for name in what:
        path, size, md5 = files[name]
        marker = os.path.join(root, f".{name}.done")
        if os.path.exists(marker):
            print(f"{name}: already downloaded and unpacked ({marker})", file=sys.stderr)
            continue
        zip_path = download_file(f"{base_url.rstrip('/')}/{path}", os.path.join(root, os.path.basename(path)), size, md5)
        try:
            with zipfile.ZipFile(zip_path) as archive:
                members = archive.infolist()
                update = progress_printer(f"unpacking {os.path.basename(zip_path)}", len(members), "files")
                for i, member in enumerate(members):
                    archive.extract(member, root)
                    update(i + 1)
                update(len(members), final=True)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{zip_path}: not a valid zip file ({err}); delete it and run again") from None
        open(marker, "w").close()
        os.remove(zip_path)
    return root


def resolve_path_or_url(path_or_url, cache_dir=None, what="file"):
    """http(s) URLs are downloaded once into the cache (HRNET_PADDLE_CACHE, default ~/.cache/hrnet-paddle);
    local paths are checked to exist. `what` names the flag in error messages, e.g. '--weights'.
    URL#sha256=HEX (pip's convention) pins the file: the download, and the cached copy on every use, must have
    that SHA-256; an unpinned first download prints the SHA-256 that arrived, to pin it with."""
    text = str(path_or_url)
    if text.startswith(("http://", "https://")):
        url, _, fragment = text.partition("#")
        pinned = fragment[len("sha256="):].lower() if fragment.startswith("sha256=") else None
        if fragment and not (pinned and re.fullmatch(r"[0-9a-f]{64}", pinned)):
            raise ValueError(f"{what} {text}: the only URL fragment read is #sha256= and 64 hex digits")
        cache_dir = cache_dir or os.environ.get("HRNET_PADDLE_CACHE") or os.path.expanduser("~/.cache/hrnet-paddle")
        name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
        dest = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest()[:10], name)
        if pinned and os.path.exists(dest) and file_digest(dest) != pinned:
            print(f"{dest}: the cached copy is not the pinned file; downloading it again", file=sys.stderr)
            os.remove(dest)
        if not os.path.exists(dest):
            print(f"downloading {url} -> {dest}", file=sys.stderr)
            try:
                download_file(url, dest, sha256=pinned)
            except ValueError as err:
                raise ValueError(f"{what} {text}: {err}") from None
            if not pinned:
                digest = file_digest(dest)
                print(f"{dest}: sha256 {digest}; pin it as {url}#sha256={digest}", file=sys.stderr)
        return dest
    if not os.path.exists(text):
        raise FileNotFoundError(f"{what} {text} not found")
    return text


# ----------------------------------------------------------------------------------------------------------
# Stopping, files written whole or not at all, and skeleton drawings (data.py show, train.py, predict.py)

def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_script(main):
    """Every script's entry point: Ctrl-C and SIGTERM (kill, a job scheduler) end it with one line, instead of
    a Python traceback or Paddle's C++ stack dump. A main() with more to say catches KeyboardInterrupt itself."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("stopped")


def temporary_path(path):
    """A scratch name beside path with the same extension (OpenCV picks the image format from it)."""
    root, ext = os.path.splitext(path)
    return f"{root}.tmp{os.getpid()}{ext}"


@contextlib.contextmanager
def atomic_output(path):
    """Yields a temporary path to write to; on success it is renamed to path, on failure removed: an interrupted
    run never leaves half a file, and the previous file stays until the new one is complete."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomically(obj, path):
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f)


def write_image_atomically(path, image):
    """cv2.imwrite through atomic_output; False if OpenCV cannot write there."""
    try:
        with atomic_output(path) as tmp:
            if not cv2.imwrite(tmp, image):
                raise OSError(path)
    except OSError:
        return False
    return True


LEFT, RIGHT, MIDDLE = (0, 128, 255), (255, 128, 0), (0, 200, 0)  # BGR: orange, blue, green


def draw_poses(image_bgr, people, skeleton, flip_pairs=(), kpt_thr=0.3):
    """A copy of image_bgr with each person's keypoints scoring above kpt_thr and the limbs between two of them:
    left side orange, right side blue, the middle green (sides from the [left, right] flip_pairs); a person's
    box too if it has one. people: dicts with keypoints (K, 3) as (x, y, score), as evaluate.py and
    predict_image make them; skeleton: 0-based keypoint pairs. A person with a "colour" (BGR) has its limbs and
    box in it (the joints keep their side colours), and a "label" is written above its box or keypoints."""
    canvas = image_bgr.copy()
    side = {}
    for left, right in flip_pairs:
        side[left], side[right] = LEFT, RIGHT
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for person in people:
        keypoints = np.asarray(person["keypoints"], np.float64).reshape(-1, 3)
        colour = person.get("colour")
        if "box" in person:
            x, y, w, h = person["box"]
            cv2.rectangle(canvas, (round(x), round(y)), (round(x + w), round(y + h)), colour or (160, 160, 160),
                          thickness)
        shown = keypoints[:, 2] > kpt_thr
        points = [(round(x), round(y)) for x, y in keypoints[:, :2]]
        for a, b in skeleton:
            if shown[a] and shown[b]:
                limb = side.get(a, MIDDLE) if side.get(a, MIDDLE) == side.get(b, MIDDLE) else MIDDLE
                cv2.line(canvas, points[a], points[b], colour or limb, thickness + 1, cv2.LINE_AA)
        for k in np.flatnonzero(shown):
            cv2.circle(canvas, points[k], thickness + 2, side.get(k, MIDDLE), -1, cv2.LINE_AA)
        if person.get("label") is not None and ("box" in person or shown.any()):
            x, y = person["box"][:2] if "box" in person else keypoints[shown, :2].min(axis=0)
            cv2.putText(canvas, str(person["label"]), (round(x) + 2, max(10 * thickness, round(y) - 3)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour or MIDDLE, thickness, cv2.LINE_AA)
    return canvas


def crop_to_bgr(image_chw):
    """A network input (normalized float 3xHxW RGB, as crop_and_normalize makes it) back to a uint8 BGR picture."""
    crop = np.clip((image_chw.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN) * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)


def heatmap_overlay(crop_bgr, heatmap, opacity=0.8):
    """A heatmap (values 0..1, a target's peak height; the rest clipped) in the JET colours, resized to the crop
    and blended over it in proportion to its value: the crop shows through where the heatmap is 0."""
    heat = np.clip(cv2.resize(heatmap.astype(np.float32), crop_bgr.shape[1::-1]), 0, 1)[..., None]
    colours = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return (crop_bgr * (1 - opacity * heat) + colours * (opacity * heat)).astype(np.uint8)


def label_tile(tile, text, font_scale=0.33):
    """Write text on a black strip across the top of tile (in place), as every picture here labels its tiles."""
    strip = round(42 * font_scale)
    cv2.rectangle(tile, (0, 0), (tile.shape[1], strip), (0, 0, 0), -1)
    cv2.putText(tile, text, (2, strip - 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def draw_learning(crop_bgr, snapshots, skeleton, flip_pairs=(), columns=8, height=256):
    """One crop at several points of a training run, left to right (train.py's learning.jpg): for each snapshot
    (label, heatmaps (K, h, w), keypoints (K, 3) as (x, y, score) in crop pixels) the maximum of its heatmaps over
    the crop, unscaled (a network unsure everywhere shows little colour), the skeleton of the joints scoring above
    draw_poses' threshold (white limbs), and the label; `columns` tiles a row, those still to come black."""
    scale = height / crop_bgr.shape[0]
    crop = cv2.resize(crop_bgr, (round(crop_bgr.shape[1] * scale), height))
    tiles = []
    for label, heatmaps, keypoints in snapshots:
        tile = heatmap_overlay(crop, np.max(heatmaps, axis=0))
        # white limbs: the stick figures' own limbs are drawn in draw_poses' side colours
        person = dict(keypoints=np.asarray(keypoints, np.float64) * [scale, scale, 1], colour=(255, 255, 255))
        tiles.append(label_tile(draw_poses(tile, [person], skeleton, flip_pairs), label, 0.45))
    return image_grid(tiles, columns)


def image_grid(images, columns=4, height=None):
    """Images side by side, `columns` per row, each resized to one height (default: the first's); blank padding."""
    height = height or images[0].shape[0]
    tiles = [cv2.resize(im, (max(1, round(im.shape[1] * height / im.shape[0])), height)) for im in images]
    width = max(t.shape[1] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, 0, 0, width - t.shape[1], cv2.BORDER_CONSTANT) for t in tiles]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    return np.vstack([np.hstack(tiles[r:r + columns]) for r in range(0, len(tiles), columns)])


# ----------------------------------------------------------------------------------------------------------
# Command line

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, except where it is None: those flags say in their help where the
    default comes from (the recipe, the checkpoint)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)



def _split_files(data_dir, split):
    """(annotation file, image folder) of a COCO-layout folder; split=None picks train2017 if present."""
    if split is None:
        has_train = os.path.exists(os.path.join(data_dir, "annotations", "person_keypoints_train2017.json"))
        split = "train2017" if has_train else "val2017"
    return os.path.join(data_dir, "annotations", f"person_keypoints_{split}.json"), os.path.join(data_dir, split)


def keypoint_subset(coco, ann_file, keypoints, max_images=None, rename=None):
    """A COCO keypoint dict cut down to the named joints, in the order named (names as canonical_joint_names reads
    them: 'left_wrist' finds 'LeftWrist'), with its skeleton's limbs between kept joints, and to the first
    max_images images that have one of them labelled. rename: new names for the kept joints. Other categories'
    annotations are dropped with their images' people."""
    category = keypoint_category(coco, ann_file)
    complete_annotations(coco, ann_file, category)
    names = category["keypoints"]
    canonical = canonical_joint_names(names)
    keep = []
    for name in keypoints:
        wanted = canonical_joint_names([name])[0]
        if name not in names and wanted not in canonical:
            raise ValueError(f"--keypoints {name}: not a keypoint of {ann_file} ({', '.join(names)})")
        keep.append(names.index(name) if name in names else canonical.index(wanted))
    if len(set(keep)) != len(keep):
        raise ValueError(f"--keypoints {','.join(keypoints)}: a joint is named twice")
    if rename is not None and len(rename) != len(keep):
        raise ValueError(f"--rename {','.join(rename)}: expected {len(keep)} names, one per kept keypoint")
    skeleton = [[keep.index(a) + 1, keep.index(b) + 1] for a, b in _valid_skeleton(category, len(names))
                if a in keep and b in keep]
    annotations, labelled = [], set()
    for ann in coco["annotations"]:
        if ann.get("category_id") != category["id"]:
            continue
        joints = np.asarray(ann["keypoints"], np.float64).reshape(len(names), 3)[keep]
        ann = dict(ann, keypoints=[float(v) if i % 3 < 2 else int(v) for i, v in enumerate(joints.ravel())],
                   num_keypoints=int((joints[:, 2] > 0).sum()))
        annotations.append(ann)
        if ann["num_keypoints"]:
            labelled.add(ann["image_id"])
    images = [image for image in coco["images"] if max_images is None or image["id"] in labelled][:max_images]
    kept_ids = {image["id"] for image in images}
    return dict(coco, images=images, annotations=[ann for ann in annotations if ann["image_id"] in kept_ids],
                categories=[dict(category, keypoints=list(rename or [names[i] for i in keep]), skeleton=skeleton)])


def _cmd_subset(args):
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images {args.max_images}: expected 1 or more")
    keypoints = [name.strip() for name in args.keypoints.split(",") if name.strip()]
    rename = [name.strip() for name in args.rename.split(",")] if args.rename else None
    splits = [split for split in ("train2017", "val2017")
              if os.path.exists(_split_files(args.data, split)[0])]
    if not splits:
        raise ValueError(f"--data {args.data}: no annotations/person_keypoints_{{train,val}}2017.json")
    for split in splits:
        ann_file, image_dir = _split_files(args.data, split)
        coco = keypoint_subset(load_json(ann_file, "annotation file"), ann_file, keypoints,
                               args.max_images if split == "train2017" else None, rename)
        out_file, out_dir = _split_files(args.out, split)
        for image in coco["images"]:  # copies, so that the subset stands alone
            os.makedirs(os.path.dirname(os.path.join(out_dir, image["file_name"])), exist_ok=True)
            shutil.copy2(os.path.join(image_dir, image["file_name"]), os.path.join(out_dir, image["file_name"]))
        os.makedirs(os.path.dirname(out_file), exist_ok=True)
        write_json_atomically(coco, out_file)
        print(f"{out_file}: {len(coco['images'])} images, {len(coco['annotations'])} people, keypoints "
              f"{', '.join(coco['categories'][0]['keypoints'])}")


def _cmd_synth(args):
    width, height = parse_size(args.size, "--size")
    start = time.time()
    make_synthetic_dataset(args.out, args.train, args.val, args.seed, (width, height), args.workers)
    print(f"wrote {args.train} train + {args.val} val images to {args.out} in {time.time() - start:.1f}s")


def _cmd_download(args):
    download_coco(args.root, [w.strip() for w in args.what.split(",") if w.strip()], args.base_url)


def _cmd_bench(args):
    ann_file, image_dir = _split_files(args.data, args.split)
    dataset = COCOKeypointDataset(ann_file, image_dir, args.input_size, train=True, udp=args.udp,
                                  **augmentation_defaults("hrnet_w32"))
    for i in range(min(10, len(dataset))):  # warm-up: file cache, lazy allocations
        dataset[i]
    start = time.perf_counter()
    for i in range(args.n):
        dataset[i % len(dataset)]
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(args.n):
        read_image_bgr(dataset.image_file(i % len(dataset)))
    decode = time.perf_counter() - start
    print(f"{args.n} training samples at {args.input_size} on one core: {args.n / elapsed:.1f} samples/s, "
          f"{1000 * elapsed / args.n:.2f} ms/sample (JPEG decode alone {1000 * decode / args.n:.2f} ms)")


def _cmd_scale_bench(args):
    """Build time and memory of a COCO-sized training set, and how much memory each DataLoader worker makes its
    own as it reads samples (a forked worker shares the dataset until something writes into its pages)."""
    if args.steps < 12:
        raise ValueError(f"--steps {args.steps}: expected at least 12 (memory is compared from step 10 on)")
    ann_file, image_dir = _split_files(args.out, "train2017")
    if not os.path.exists(ann_file):
        start = time.time()
        pool = Pool(1)  # in a child process, so this one's peak memory is the dataset's alone
        pool.apply(make_coco_scale_file, (args.out,))
        pool.close()
        pool.join()
        print(f"wrote {ann_file} ({os.path.getsize(ann_file) / 1e6:.0f} MB) in {time.time() - start:.1f}s")
    before = process_memory_mb()
    start, start_cpu = time.perf_counter(), time.process_time()
    dataset = COCOKeypointDataset(ann_file, image_dir, args.input_size, train=True,
                                  **augmentation_defaults("hrnet_w32"))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    after = process_memory_mb()
    print(f"built {len(dataset)} samples in {elapsed:.1f}s ({cpu:.1f}s CPU); main process resident "
          f"{before['Rss']:.0f} MB before, peak {after['VmHWM']:.0f} MB while building, {after['Rss']:.0f} MB after")
    if len(dataset) < args.steps * args.batch_size:
        raise ValueError(f"--steps {args.steps} x --batch-size {args.batch_size}: more than the {len(dataset)} samples")
    # exactly --steps batches of random samples: the loader then ends as it should, its workers and reader
    # thread shut down, instead of an iterator left half-read for the garbage collector
    picked = np.random.default_rng(0).permutation(len(dataset))[:args.steps * args.batch_size]
    loader = data_loader(paddle.io.Subset(dataset, picked.tolist()), args.workers, batch_size=args.batch_size,
                         drop_last=True)
    first, last = 10, args.steps - 1
    others = set(child_pids())  # processes started before (in a test run, other loaders' workers)
    for step, _ in enumerate(loader):
        if step == first:
            workers = idle_memory_mb([pid for pid in child_pids() if pid not in others])
            start = time.perf_counter()
        if step == last:
            elapsed = time.perf_counter() - start
            for pid, late in idle_memory_mb(list(workers)).items():
                early, late_dirty = workers[pid]["Private_Dirty"], late["Private_Dirty"]
                print(f"worker {pid}: private dirty memory {early:.1f} MB at step {first}, "
                      f"{late_dirty:.1f} MB at step {last} ({late_dirty - early:+.1f} MB); "
                      f"resident {late['Rss']:.0f} MB, proportional share {late['Pss']:.0f} MB")
    print(f"{args.workers} workers, batch {args.batch_size} at {args.input_size}: "
          f"{(last - first) * args.batch_size / elapsed:.1f} samples/s from step {first} to {last}; "
          f"main process resident {process_memory_mb()['Rss']:.0f} MB")


def _cmd_show(args):
    """A grid of training crops with their target heatmaps and keypoints: the quickest check of a dataset."""
    ann_file, image_dir = _split_files(args.data, args.split)
    dataset = COCOKeypointDataset(ann_file, image_dir, args.input_size, train=not args.no_augment, seed=args.seed)
    tiles = []
    for i in np.linspace(0, len(dataset) - 1, args.n).astype(int):
        image, target, weight, _ = dataset[i]
        tile = heatmap_overlay(crop_to_bgr(image), target.max(axis=0))
        peaks = [np.unravel_index(t.argmax(), t.shape)[::-1] for t in target]  # each target's centre
        keypoints = [(x * HEATMAP_STRIDE, y * HEATMAP_STRIDE, float(w > 0 and t.max() > 0))
                     for (x, y), w, t in zip(peaks, weight[:, 0], target)]
        tiles.append(draw_poses(tile, [{"keypoints": keypoints}], dataset.info.skeleton, dataset.info.flip_pairs))
    if not write_image_atomically(args.out, image_grid(tiles)):
        raise ValueError(f"--out {args.out}: OpenCV cannot write an image there")
    print(f"wrote {args.out} ({len(dataset)} samples in {ann_file})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="write the synthetic stick-figure dataset (COCO format)")
    synth.add_argument("--out", required=True, help="output folder (COCO layout)")
    synth.add_argument("--train", type=int, default=SYNTHETIC_TRAIN_IMAGES, help="number of training images")
    synth.add_argument("--val", type=int, default=200, help="number of validation images")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same files")
    synth.add_argument("--size", default="240x320", help="image HEIGHTxWIDTH")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: one per core, at most 8)")
    synth.set_defaults(func=_cmd_synth)
    download = commands.add_parser("download", help="download and unpack COCO 2017 (resumable)")
    download.add_argument("--root", required=True, help="folder for train2017/, val2017/, annotations/")
    download.add_argument("--what", default="train,val,annotations", help="comma-separated items to fetch")
    download.add_argument("--base-url", default=COCO_BASE_URL, help="host serving zips/ and annotations/")
    download.set_defaults(func=_cmd_download)
    for name, func, text in (("bench", _cmd_bench, "training samples/s of the data pipeline on one core"),
                             ("show", _cmd_show, "save a grid of augmented training crops with targets")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--data", required=True, help="COCO-layout folder (annotations/, train2017/, val2017/)")
        sub.add_argument("--split", default=None, help="train2017 or val2017 (default: train2017 if present)")
        sub.add_argument("--input-size", default="256x192", help="HEIGHTxWIDTH")
        sub.set_defaults(func=func)
    subset = commands.add_parser("subset", help="a COCO keypoint set cut down to named joints (and images)")
    subset.add_argument("--data", required=True, help="COCO-layout folder (annotations/, train2017/, val2017/)")
    subset.add_argument("--keypoints", required=True,
                        help="comma-separated joints to keep, in the new order (e.g. left_wrist,right_wrist)")
    subset.add_argument("--max-images", type=int, default=None,
                        help="keep only the first N training images with a kept joint labelled (default: all); "
                             "the val set keeps all its images")
    subset.add_argument("--rename", default=None, help="comma-separated new names of the kept joints")
    subset.add_argument("--out", required=True, help="output folder (COCO layout; images copied)")
    subset.set_defaults(func=_cmd_subset)
    bench = commands.choices["bench"]
    bench.add_argument("--n", type=int, default=500, help="samples to time")
    bench.add_argument("--udp", action="store_true", help="UDP warp and targets")
    scale = commands.add_parser("scale-bench", formatter_class=HelpFormatter,
                                help="build time and memory of a COCO-sized training set (made from assets/ if "
                                     "absent) and DataLoader workers' memory growth")
    scale.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "hrnet_paddle_coco_scale"),
                       help="folder of the COCO-sized file (annotations/, train2017/), written if absent")
    scale.add_argument("--input-size", default="256x192", help="HEIGHTxWIDTH")
    scale.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    scale.add_argument("--batch-size", type=int, default=32, help="samples per batch")
    scale.add_argument("--steps", type=int, default=300,
                       help="batches to read; memory is compared at step 10 and the last")
    scale.set_defaults(func=_cmd_scale_bench)
    show = commands.choices["show"]
    show.add_argument("--out", default="samples.jpg", help="output image")
    show.add_argument("--n", type=int, default=8, help="number of crops")
    show.add_argument("--seed", type=int, default=0, help="augmentation seed")
    show.add_argument("--no-augment", action="store_true", help="plain crops, as at evaluation")
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    run_script(main)
