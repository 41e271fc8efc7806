"""
Evaluate a top-down HRNet / Lite-HRNet pose model on COCO keypoints (OKS AP).

The pipeline reproduces the official HRNet evaluation (`validate` in lib/core/function.py and
`COCODataset.evaluate` in lib/dataset/coco.py):

    person boxes (GT or detector) -> crops -> heatmaps, averaged with the flipped crop's
    -> keypoints: integer argmax + quarter offset (HRNet, Lite-HRNet) or DARK (PaddleDetection)
    -> image coordinates -> rescoring + OKS-NMS per image -> COCO results -> pycocotools COCOeval

Examples:
    python evaluate.py --data data/coco --model hrnet_w32 --weights hrnet_w32.pdparams
    python evaluate.py --data data/coco --model hrnet_w32 --weights w.pdparams --boxes det   # detector boxes
    python evaluate.py --data data/coco --model-dir export/hrnet_w32 --precision bf16   # an export (export.py)
    python evaluate.py --data data/coco --model-dir export/hrnet_w32 --backend onnxruntime   # its model.onnx
    python evaluate.py --data data/coco --results results.json   # only score an existing results file
"""
import os
import sys
import warnings

if "--verbose" not in sys.argv:  # Paddle's C++ log lines (e.g. "PIR not support input out tensor"), read at import
    os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time note about C++ extensions

import argparse
import contextlib
import io
import json
import time
from collections import defaultdict

import cv2
import numpy as np
import paddle
import paddle.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data import (COCOKeypointDataset, HelpFormatter, complete_annotations, data_loader, finite_numbers,
                  keypoint_category, keypoint_info_from_category, load_json, parse_input_size, resolve_path_or_url,
                  run_script, transform_preds, write_json_atomically)
from export import add_runtime_flags, create_predictor, read_pose_json
from model import add_checkpoint_flags, build_from_checkpoint, decoding_of, read_checkpoint, set_device

STAT_NAMES = ("AP", "AP .5", "AP .75", "AP (M)", "AP (L)", "AR", "AR .5", "AR .75", "AR (M)", "AR (L)")
DETECTION_FILE = os.path.join("person_detection_results", "COCO_val2017_detections_AP_H_56_person.json")

# -----------------------------------------------------------------------------
# heatmaps -> keypoints


def get_max_preds(heatmaps):
    """Integer peak of every heatmap: coords (N,K,2) float32 as (x, y) and maxvals (N,K,1).

    A joint whose peak is <= 0 gets coords (0, 0), as in the official code."""
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be N x K x H x W, got shape {heatmaps.shape}")
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    idx = flat.argmax(axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2)
    coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    coords *= maxvals > 0
    return coords, maxvals


def quarter_offset(heatmaps, coords):
    """Official HRNet refinement (TEST.POST_PROCESS): move the integer peak 0.25 px toward the
    higher of its two neighbours, separately in x and y. Returns new coords; the inputs are unchanged."""
    n, k, h, w = heatmaps.shape
    maps = heatmaps.reshape(n * k, h, w)
    out = coords.reshape(n * k, 2).copy()
    px = np.floor(out[:, 0] + 0.5).astype(np.int64)
    py = np.floor(out[:, 1] + 0.5).astype(np.int64)
    # strict bounds as in the official code: peaks on the first two / last row or column stay put
    inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    i, x, y = np.flatnonzero(inside), px[inside], py[inside]
    diff = np.stack([maps[i, y, x + 1] - maps[i, y, x - 1], maps[i, y + 1, x] - maps[i, y - 1, x]], axis=1)
    out[inside] += 0.25 * np.sign(diff)
    return out.reshape(coords.shape)


def _blur_keep_peak(heatmaps, kernel):
    """DARK step 1: Gaussian-smooth each map (zero border) and rescale it back to its original peak."""
    n, k, h, w = heatmaps.shape
    border = (kernel - 1) // 2
    maps = heatmaps.reshape(n * k, h, w)
    blurred = np.empty_like(maps)
    # cv2 filters each channel on its own; stacking maps as channels (at most 128 per call) saves calls
    for start in range(0, n * k, 128):
        chunk = maps[start:start + 128]
        padded = np.zeros((h + 2 * border, w + 2 * border, len(chunk)))
        padded[border:border + h, border:border + w] = chunk.transpose(1, 2, 0)
        smooth = cv2.GaussianBlur(padded, (kernel, kernel), 0)  # sigma 0: cv2 derives it from the kernel size
        smooth = smooth[border:border + h, border:border + w].reshape(h, w, -1)  # cv2 drops a single channel
        blurred[start:start + len(chunk)] = smooth.transpose(2, 0, 1)
    peak_before = maps.max(axis=(1, 2), keepdims=True)
    peak_after = blurred.max(axis=(1, 2), keepdims=True)
    blurred *= np.divide(peak_before, peak_after, out=np.ones_like(peak_before), where=peak_after != 0)
    return blurred.reshape(heatmaps.shape)


def dark_refine(heatmaps, coords, kernel=3):
    """DARK (Zhang et al., CVPR 2020): treat the smoothed log-heatmap around the peak as a quadratic
    and take one Newton step, x <- x - H^-1 grad. Returns new coords; the inputs are unchanged
    (PaddleDetection blurs the caller's heatmaps in place; we work on a copy).

    kernel: Gaussian blur size; PaddleDetection uses 3, mmpose / the DARK paper 11 (for sigma 2)."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"DARK blur kernel must be a positive odd number, got {kernel}")
    n, k, h, w = heatmaps.shape
    logs = np.log(np.maximum(_blur_keep_peak(heatmaps, kernel), 1e-10)).reshape(n * k, h, w).astype(np.float64)
    out = coords.reshape(n * k, 2).copy()
    px, py = out[:, 0].astype(np.int64), out[:, 1].astype(np.int64)
    # the second differences reach two pixels out, hence the tighter bounds than the quarter offset
    inside = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
    i, x, y = np.flatnonzero(inside), px[inside], py[inside]

    def at(dy, dx):
        return logs[i, y + dy, x + dx]

    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    dyy = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    det = dxx * dyy - dxy ** 2
    ok = det != 0  # singular Hessian (e.g. a flat map): keep the integer peak
    det = np.where(ok, det, 1.0)
    # H^-1 = [[dyy, -dxy], [-dxy, dxx]] / det
    step_x = (dyy * dx - dxy * dy) / det
    step_y = (dxx * dy - dxy * dx) / det
    out[i[ok], 0] -= step_x[ok]
    out[i[ok], 1] -= step_y[ok]
    return out.reshape(coords.shape)


def heatmaps_to_keypoints(heatmaps, centers, scales, decode="default", dark_kernel=3, udp=False):
    """Decode heatmaps (N,K,h,w) of crops with the given box centers/scales (N,2) into image
    coordinates (N,K,2) float32 and the peak values (N,K,1), which serve as joint scores.

    decode: "default" = argmax + quarter offset (HRNet, Lite-HRNet), "dark" = DARK (PaddleDetection's default).
    udp: the crops were made with UDP's warp (data.py --udp), whose heatmap-to-image map differs."""
    heatmaps = np.asarray(heatmaps)
    coords, maxvals = get_max_preds(heatmaps)
    if decode == "default":
        coords = quarter_offset(heatmaps, coords)
    elif decode == "dark":
        coords = dark_refine(heatmaps, coords, dark_kernel)
    else:
        raise ValueError(f"unknown decode {decode!r}: use 'default' or 'dark'")
    h, w = heatmaps.shape[2:]
    # heatmap pixel coordinates go through the inverse crop transform as they are (no half-pixel term)
    preds = [transform_preds(c, center, scale, (w, h), udp=udp) for c, center, scale in zip(coords, centers, scales)]
    preds = np.array(preds, dtype=np.float32).reshape(coords.shape)
    return preds, maxvals


def add_decode_flags(parser):
    """--decode and --dark-kernel, for evaluate.py and predict.py: unset, the model's own (chosen_decoding)."""
    parser.add_argument("--decode", choices=("default", "dark"), default=None,
                        help="default = argmax + quarter offset (HRNet, the official), dark = DARK (PaddleDetection) "
                             "(default: what the checkpoint or export says, e.g. dark for python train.py's; else "
                             "default)")
    parser.add_argument("--dark-kernel", type=int, default=None,
                        help="DARK blur kernel, odd (PaddleDetection 3, mmpose 11) (default: the checkpoint's or "
                             "export's, else 3)")


def chosen_decoding(args, description, what):
    """(decode, dark_kernel, a note saying which) from --decode / --dark-kernel, else from description: the
    checkpoint's record or the export's pose.json (what: 'checkpoint' or 'export')."""
    own_decode, own_kernel = decoding_of(description)
    decode, kernel = args.decode or own_decode, args.dark_kernel or own_kernel
    note = f"decode {decode}" + (f" (kernel {kernel})" if decode == "dark" else "")
    if args.decode is None and decode != "default":
        note += f" as the {what} says (--decode default: the official)"
    return decode, kernel, note


# -----------------------------------------------------------------------------
# flip test


def flip_back(heatmaps_flipped, flip_pairs):
    """Heatmaps predicted for a mirrored crop -> heatmaps for the original crop:
    mirror the width and swap left/right joint channels. Returns a new array."""
    out = heatmaps_flipped[..., ::-1].copy()
    for left, right in flip_pairs:
        out[:, [left, right]] = out[:, [right, left]]
    return out


def merge_flip(heatmaps, heatmaps_of_flipped_input, flip_pairs, shift=True):
    """Average the heatmaps of a crop with those of its mirror image (official flip test)."""
    back = flip_back(heatmaps_of_flipped_input, flip_pairs)
    if shift:
        # Official SHIFT_HEATMAP quirk, kept for fidelity: a 192-px crop mirrors x -> 191 - x, i.e.
        # 47.75 - x/4 at stride 4, but mirroring the 48-px heatmap gives 47 - x/4, so the flipped-back
        # map sits 0.75 px too far left; the official code shifts it right by one pixel (column 0 kept).
        back[..., 1:] = back[..., :-1].copy()
    return (heatmaps + back) * 0.5


def predict_batch(run, images, flip=False, flip_pairs=None, shift=True):
    """Heatmaps (numpy) of one batch of crops, run(images) being the model; with flip, the flip test: averaged
    with the heatmaps of the mirrored crops. images: a paddle Tensor or a numpy array (N, 3, H, W)."""
    heatmaps = run(images)
    if flip:
        mirrored = paddle.flip(images, axis=[3]) if isinstance(images, paddle.Tensor) else images[..., ::-1].copy()
        heatmaps = merge_flip(heatmaps, run(mirrored), flip_pairs, shift)
    return heatmaps


def predict_heatmaps(model, loader, flip=True, flip_pairs=None, shift=True):
    """Run the model over a loader of (image, target, target_weight, index) batches.
    flip: flip test; shift: its one-pixel shift (see merge_flip; not wanted with UDP, whose grid mirrors exactly).

    Yields one (heatmaps (B,K,h,w) float32, dataset indices (B,), skipped dataset indices) per batch:
    samples whose image could not be read (index -(i+1) from the dataset) are left out and listed.
    The model is put in eval mode and restored to its previous mode afterwards."""
    if flip and flip_pairs is None:
        raise ValueError("flip test needs the dataset's flip_pairs")
    was_training = model.training
    model.eval()
    try:
        for images, _target, _target_weight, indices in loader:
            with paddle.no_grad():
                heatmaps = predict_batch(lambda x: model(x).numpy(), images, flip, flip_pairs, shift)
            indices = indices.numpy().reshape(-1)
            readable = indices >= 0
            yield heatmaps[readable], indices[readable], -indices[~readable] - 1
    finally:
        if was_training:
            model.train()


# -----------------------------------------------------------------------------
# OKS, OKS-NMS, rescoring


def oks_iou(g, d, area_g, area_d, sigmas, in_vis_thre=None):
    """Object keypoint similarity of one pose g (K,3) against poses d (M,K,3); flat [x,y,v]*K also accepted.

    Official formula: e = dist^2 / (2 sigma)^2 / (mean area + eps) / 2, OKS = mean of exp(-e) over the
    joints kept; with in_vis_thre only joints scoring above it in both poses count (none left -> 0).
    (The official code writes that test as `list(vg > t) and list(vd > t)`, which Python evaluates to the
    detection's flags alone; it never matters there because the official NMS passes in_vis_thre=None.)"""
    variances = (np.asarray(sigmas, dtype=np.float64) * 2) ** 2
    g = np.asarray(g, dtype=np.float64).reshape(-1, 3)
    d = np.asarray(d, dtype=np.float64).reshape(len(d), len(g), 3)
    area_d = np.asarray(area_d, dtype=np.float64).reshape(-1)
    sq_dist = ((d[:, :, :2] - g[None, :, :2]) ** 2).sum(axis=2)
    e = sq_dist / variances / ((area_g + area_d[:, None]) / 2 + np.spacing(1)) / 2
    keep = np.ones_like(e, dtype=bool)
    if in_vis_thre is not None:
        keep = (g[None, :, 2] > in_vis_thre) & (d[:, :, 2] > in_vis_thre)
    count = keep.sum(axis=1)
    return np.where(count > 0, (np.exp(-e) * keep).sum(axis=1) / np.maximum(count, 1), 0.0)


def _pose_arrays(kpts_db):
    scores = np.array([p["score"] for p in kpts_db], dtype=np.float64)
    kpts = np.array([np.asarray(p["keypoints"]).reshape(-1, 3) for p in kpts_db], dtype=np.float64)
    areas = np.array([p["area"] for p in kpts_db], dtype=np.float64)
    return scores, kpts, areas


def oks_nms(kpts_db, thr, sigmas, in_vis_thre=None):
    """Greedy OKS-NMS: take the best-scored pose, drop every pose with OKS > thr to it, repeat.
    kpts_db: list of dicts with 'keypoints' (K,3), 'score', 'area'. Returns the kept indices, best first."""
    if len(kpts_db) == 0:
        return []
    scores, kpts, areas = _pose_arrays(kpts_db)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        oks = oks_iou(kpts[best], kpts[rest], areas[best], areas[rest], sigmas, in_vis_thre)
        order = rest[oks <= thr]
    return keep


def soft_oks_nms(kpts_db, thr, sigmas, in_vis_thre=None, max_dets=20):
    """Soft OKS-NMS: instead of dropping overlapping poses, decay their scores by exp(-oks^2 / thr)
    and re-sort; stops after max_dets poses (the official code keeps at most 20)."""
    if len(kpts_db) == 0:
        return []
    scores, kpts, areas = _pose_arrays(kpts_db)
    order = scores.argsort()[::-1]
    scores = scores[order]
    keep = []
    while order.size > 0 and len(keep) < max_dets:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        oks = oks_iou(kpts[best], kpts[rest], areas[best], areas[rest], sigmas, in_vis_thre)
        scores = scores[1:] * np.exp(-oks ** 2 / thr)
        resort = scores.argsort()[::-1]
        order, scores = rest[resort], scores[resort]
    return keep


def person_score(joint_scores, box_score, in_vis_thre=0.2):
    """Official rescoring: box score x mean of the joint scores above in_vis_thre (0 if none is)."""
    joint_scores = np.asarray(joint_scores, dtype=np.float32)  # compared in float32 as in the official code
    confident = joint_scores[joint_scores > in_vis_thre].astype(np.float64)
    return float((confident.mean() if confident.size else 0.0) * box_score)


def rescore_and_nms(people, sigmas, in_vis_thre=0.2, oks_thre=0.9, soft=False):
    """Person detections -> COCO keypoint results (official COCODataset.evaluate).

    people: dicts with image_id, keypoints (K,3) as (x, y, joint score), center, scale (200-px units)
    and score (the box score: 1 for GT boxes).
    Person score = box score x mean of the joint scores above in_vis_thre (0 if none);
    then OKS-NMS per image over all joints (official: NMS is called without in_vis_thre)."""
    by_image = defaultdict(list)
    for person in people:
        keypoints = np.asarray(person["keypoints"], dtype=np.float32).reshape(-1, 3)
        scale = np.asarray(person["scale"], dtype=np.float64)
        by_image[person["image_id"]].append({
            "image_id": person["image_id"],
            "keypoints": keypoints,
            "center": person["center"],
            "scale": person["scale"],
            "area": float(np.prod(scale * 200)),  # the padded box area (scale already includes the 1.25)
            "score": person_score(keypoints[:, 2], person["score"], in_vis_thre),
        })
    nms = soft_oks_nms if soft else oks_nms
    results = []
    for image_id, candidates in by_image.items():
        for i in nms(candidates, oks_thre, sigmas):
            p = candidates[i]
            results.append({
                "image_id": int(image_id),
                "category_id": 1,
                "keypoints": [float(v) for v in p["keypoints"].reshape(-1)],
                "score": p["score"],
                "center": [float(v) for v in p["center"]],
                "scale": [float(v) for v in p["scale"]],
            })
    return results


# -----------------------------------------------------------------------------
# COCO scoring


def _quietly(fn, *args):
    """Call a pycocotools function without its progress chatter on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def load_ground_truth(ann_file):
    """(pycocotools COCO, keypoint category) of an annotation file, completed as data.py completes it for training
    (area, iscrowd, num_keypoints filled in where a public set leaves them out: pycocotools needs them)."""
    coco = load_json(ann_file, "annotation file")
    category = keypoint_category(coco, ann_file)
    complete_annotations(coco, ann_file, category)
    gt = COCO()
    gt.dataset = coco
    _quietly(gt.createIndex)
    return gt, category


def matched_cocoeval(ann_file_or_coco, results, sigmas=None, image_ids=None):
    """pycocotools' COCOeval of keypoint results after its evaluate(): every image's predictions matched to its
    ground truth at each OKS threshold, nothing accumulated yet.

    sigmas: per-joint OKS sigmas; default: those data.py picks for an annotation file's keypoints (COCO's for
    COCO's 17), needed with a COCO object of another keypoint set.
    image_ids: score only these images (default: every image of the annotation file)."""
    if isinstance(ann_file_or_coco, COCO):
        gt, source = ann_file_or_coco, "the annotation set"
    else:
        source = str(ann_file_or_coco)
        if not os.path.isfile(source):
            raise ValueError(f"annotation file not found: {source}")
        gt, category = load_ground_truth(source)
        if sigmas is None:
            sigmas = keypoint_info_from_category(category).sigmas
    if len(results) == 0:
        raise ValueError(f"no keypoint results to score against {source}")
    if not all(isinstance(r, dict) for r in results):
        raise ValueError("keypoint results must be dicts with image_id, category_id, keypoints and score")
    unknown = {r.get("image_id") for r in results} - set(gt.getImgIds())
    if unknown:
        examples = ", ".join(str(i) for i in sorted(unknown, key=str)[:3])
        raise ValueError(f"{len(unknown)} result image ids (e.g. {examples}) are not in {source}: "
                         "were the predictions made for another annotation file?")

    num_joints = 17 if sigmas is None else len(sigmas)
    for r in results:
        if "score" not in r or len(r.get("keypoints", ())) != 3 * num_joints:
            raise ValueError(f"a result for image {r.get('image_id')} lacks a score or {3 * num_joints} keypoint "
                             f"values (x, y, score for each of {num_joints} joints)")

    # loadRes adds area/bbox/id keys to the dicts it is given: hand it copies
    detections = _quietly(gt.loadRes, [dict(r) for r in results])
    coco_eval = COCOeval(gt, detections, "keypoints")
    coco_eval.params.useSegm = None  # as in the official code (a leftover of the old pycocotools API)
    if image_ids is not None:
        coco_eval.params.imgIds = sorted(image_ids)
    if sigmas is not None:
        sigmas = np.asarray(sigmas, dtype=np.float64)
        default = coco_eval.params.kpt_oks_sigmas
        # keep pycocotools' own float64 COCO sigmas unless really different, so COCO AP stays bit-exact
        if sigmas.shape != default.shape or not np.allclose(sigmas, default):
            coco_eval.params.kpt_oks_sigmas = sigmas
    _quietly(coco_eval.evaluate)
    return coco_eval


def coco_keypoint_stats(ann_file_or_coco, results, sigmas=None, image_ids=None, per_joint=False):
    """Score COCO keypoint results with pycocotools; returns {name: value} for the 10 STAT_NAMES (arguments as
    matched_cocoeval's), and with per_joint also "per_joint": (names, per_joint_scores) from the same matching."""
    coco_eval = matched_cocoeval(ann_file_or_coco, results, sigmas, image_ids)
    _quietly(coco_eval.accumulate)
    _quietly(coco_eval.summarize)
    stats = {name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats)}
    if per_joint:
        names = keypoint_category(coco_eval.cocoGt.dataset, "the annotation set")["keypoints"]
        stats["per_joint"] = (names, per_joint_scores(coco_eval))
    return stats


def per_joint_scores(coco_eval, pck_oks=0.5):
    """Which joints are hard: per keypoint, over the prediction-GT pairs COCOeval matched at its loosest OKS
    threshold (0.5, all areas) and the joints labelled in the GT, the mean of the joint's own OKS term
    exp(-d^2 / (2 area (2 sigma)^2)) and the share of joints where that term is >= pck_oks (a PCK whose radius
    is the joint's COCO sigma scaled by the person's size). Returns (mean OKS (K,), PCK (K,), joints counted (K,))."""
    variances = (2 * np.asarray(coco_eval.params.kpt_oks_sigmas, np.float64)) ** 2
    oks_sum, hits, counts = np.zeros(len(variances)), np.zeros(len(variances)), np.zeros(len(variances))
    all_areas = coco_eval.params.areaRng[0]
    for image in coco_eval.evalImgs:
        if image is None or image["aRng"] != all_areas:
            continue
        for dt_id, gt_id, ignored in zip(image["dtIds"], image["dtMatches"][0], image["dtIgnore"][0]):
            if gt_id == 0 or ignored:
                continue
            gt, dt = coco_eval.cocoGt.anns[int(gt_id)], coco_eval.cocoDt.anns[dt_id]
            g, d = np.reshape(gt["keypoints"], (-1, 3)), np.reshape(dt["keypoints"], (-1, 3))
            labelled = g[:, 2] > 0
            squared = ((d[:, :2] - g[:, :2]) ** 2).sum(axis=1)
            oks = np.exp(-squared / variances / (gt["area"] + np.spacing(1)) / 2)  # COCOeval.computeOks's terms
            oks_sum += np.where(labelled, oks, 0)
            hits += labelled & (oks >= pck_oks)
            counts += labelled
    with np.errstate(invalid="ignore"):
        return oks_sum / counts, hits / counts, counts.astype(int)


def print_per_joint_table(names, scores, pck_oks=0.5):
    """The table of per_joint_scores (scores, computed at pck_oks), hardest joint last."""
    mean_oks, pck, counts = scores
    print(f"{'joint':<15} {'OKS':>6} {f'PCK@{pck_oks:g}':>8} {'joints':>7}")
    for k in sorted(range(len(names)), key=lambda k: -np.nan_to_num(mean_oks[k], nan=-1)):
        print(f"{names[k]:<15} {mean_oks[k]:6.3f} {pck[k]:8.3f} {counts[k]:7d}")


# -----------------------------------------------------------------------------
# the evaluation loop


class PredictorModel(paddle.nn.Layer):
    """An exported model's predictor (export.create_predictor: numpy crops -> numpy heatmaps) behind the
    nn.Layer interface that evaluate_model calls."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def forward(self, images):
        return paddle.to_tensor(self.run(images.numpy()))


def evaluate_model(model, dataset, batch_size=32, flip=True, decode="default", dark_kernel=3,
                   in_vis_thre=0.2, oks_thre=0.9, soft_nms=False, num_workers=0, log=print, data_parallel=False,
                   per_joint=False):
    """Predict every person box of a COCOKeypointDataset, decode, rescore + OKS-NMS and score with pycocotools.
    data_parallel: every process of a paddle.distributed run calls this, each predicts every world-size-th box,
    and all score the gathered predictions (the model must be the same in all: BatchNorm statistics too).
    Returns (COCO results list, stats dict; per_joint: see coco_keypoint_stats)."""
    if len(dataset) == 0:
        raise ValueError(f"no person boxes to evaluate for {dataset.ann_file}")
    flip = flip and dataset.info.flip  # keypoint names without left/right: data.py said so once
    world, rank = (dist.get_world_size(), dist.get_rank()) if data_parallel else (1, 0)
    samples = dataset if world == 1 else paddle.io.Subset(dataset, range(rank, len(dataset), world))
    loader = data_loader(samples, num_workers, batch_size=batch_size, shuffle=False, drop_last=False)
    people, people_indices, skipped, seen = [], [], [], 0
    start = last_report = time.time()
    udp = dataset.udp  # UDP crops need the matching inverse transform and no flip shift
    for heatmaps, indices, skipped_indices in predict_heatmaps(model, loader, flip, dataset.info.flip_pairs,
                                                               shift=not udp):
        skipped.extend(skipped_indices)
        seen += len(indices) + len(skipped_indices)
        if len(indices):
            records = [dataset.record(i) for i in indices]
            centers = np.array([r["center"] for r in records])
            scales = np.array([r["scale"] for r in records])
            coords, maxvals = heatmaps_to_keypoints(heatmaps, centers, scales, decode, dark_kernel, udp)
            people_indices.extend(indices)
            for record, xy, joint_scores in zip(records, coords, maxvals):
                people.append({"image_id": record["image_id"], "keypoints": np.concatenate([xy, joint_scores], axis=1),
                               "center": record["center"], "scale": record["scale"], "score": record["score"]})
        now = time.time()
        if now - last_report > 10 and seen < len(samples):
            rate = seen / (now - start)
            log(f"eval {seen}/{len(samples)} samples, {rate:.1f} samples/s, ETA {(len(samples) - seen) / rate:.0f} s")
            last_report = now
    if world > 1:
        people, skipped, seen = gather_predictions(people, people_indices, skipped, seen)
    elapsed = time.time() - start
    log(f"predicted {seen} samples in {elapsed:.1f} s ({seen / max(elapsed, 1e-9):.1f} samples/s, "
        f"flip test {'on' if flip else 'off'})")
    if not people:
        raise ValueError(f"none of the {seen} images could be read (image directory of {dataset.ann_file}?)")
    results = rescore_and_nms(people, dataset.info.sigmas, in_vis_thre, oks_thre, soft_nms)
    gt, _ = load_ground_truth(dataset.ann_file)
    scored_images = set(gt.getImgIds())
    if skipped:
        # score the images we could read: their unread ground truth would otherwise count as missed people
        unread = {dataset.image_ids.item(i) for i in skipped}
        scored_images -= unread
        log(f"warning: skipped {len(skipped)} of {seen} samples: {len(unread)} images could not be read; "
            f"scoring the other {len(scored_images)} images only")
    return results, coco_keypoint_stats(gt, results, dataset.info.sigmas, scored_images, per_joint)


def gather_predictions(people, people_indices, skipped, seen):
    """Every process's (people, skipped, seen) of evaluate_model's data-parallel prediction, the people in the
    order of their dataset indices, as one process makes them (OKS-NMS keeps the first of equal scores)."""
    parts = []
    dist.all_gather_object(parts, (people_indices, people, skipped, seen))
    ordered = sorted(((i, person) for part in parts for i, person in zip(part[0], part[1])), key=lambda p: p[0])
    return ([person for _, person in ordered], sorted(i for part in parts for i in part[2]),
            sum(part[3] for part in parts))


# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="COCO keypoint evaluation (OKS AP) of HRNet / Lite-HRNet",
                                formatter_class=HelpFormatter)
    p.add_argument("--data", help="COCO dir with annotations/person_keypoints_val2017.json and val2017/")
    p.add_argument("--ann", help="annotation file (overrides --data)")
    p.add_argument("--images", help="image directory (overrides --data)")
    p.add_argument("--results", help="only score this COCO results JSON (no model)")
    add_checkpoint_flags(p, "checkpoint path or URL (formats: see model.load_weights)")
    p.add_argument("--model-dir", help="an exported model folder (export.py, quantize.py) instead of --weights")
    add_runtime_flags(p)
    p.add_argument("--boxes", default="gt", help="'gt' (ground-truth boxes), 'det' (DATA/" + DETECTION_FILE
                   + ", the boxes of the official HRNet tables) or a detection-results JSON")
    p.add_argument("--det-score-thr", type=float, default=0.0, help="drop detector boxes scoring below this")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="flip test")
    p.add_argument("--flip-pairs", nargs="+", default=None, metavar="LEFT,RIGHT",
                   help="joints swapped by the flip test, as in train.py (default: from the keypoint names)")
    add_decode_flags(p)
    p.add_argument("--soft-nms", action="store_true", help="soft OKS-NMS instead of greedy")
    p.add_argument("--in-vis-thre", type=float, default=0.2, help="joint score threshold for rescoring")
    p.add_argument("--oks-thre", type=float, default=0.9, help="OKS-NMS threshold")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="data loader worker processes")
    p.add_argument("--out", help="write the COCO results JSON here")
    p.add_argument("--device", default=None, help="cpu or gpu (default: gpu if Paddle has CUDA)")
    p.add_argument("--verbose", action="store_true", help="also show Paddle's and oneDNN's own log lines")
    return p.parse_args(argv)


def _existing(path, what):
    if not os.path.exists(path):
        raise SystemExit(f"error: {what} not found: {path}")
    return path


def _read_results(path):
    """A COCO keypoint-results file, checked to be a list of {image_id, keypoints, score} with numbers."""
    try:
        with open(path) as f:
            results = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: --results {path} is not valid JSON ({e})")
    expected = "a JSON list of COCO keypoint results {image_id, category_id, keypoints, score}"
    if not isinstance(results, list):
        raise SystemExit(f"error: --results {path} holds a {type(results).__name__}, expected {expected}")
    for i, r in enumerate(results):
        if not (isinstance(r, dict) and "image_id" in r and finite_numbers([r.get("score")])
                and finite_numbers(r.get("keypoints"))):
            raise SystemExit(f"error: --results {path}: entry {i} is {json.dumps(r)[:80]}, expected {expected} "
                             f"(finite numbers)")
    return results


def _predict(args, ann_file):
    if args.model_dir and (args.model or args.weights):
        raise SystemExit("error: --model-dir and --weights are alternatives: give one of them")
    if not (args.weights or args.model_dir):
        raise SystemExit("error: --weights or --model-dir is needed (or --results to score an existing file)")
    if not (args.images or args.data):
        raise SystemExit("error: give --data DIR or --images DIR")
    image_dir = _existing(args.images or os.path.join(args.data, "val2017"), "image directory (--images/--data)")
    boxes = args.boxes
    if boxes == "det":
        if not args.data:
            raise SystemExit("error: --boxes det needs --data (or pass the detection file itself)")
        boxes = os.path.join(args.data, DETECTION_FILE)
    if boxes != "gt" and not boxes.startswith(("http://", "https://")):
        _existing(boxes, "box file (--boxes)")
    set_device(args.device)
    if args.model_dir:  # the export's own input size, crops and keypoints
        pose = read_pose_json(args.model_dir)
        height, width = pose["input_size"]
        if args.input_size and parse_input_size(args.input_size) != (width, height):
            raise ValueError(f"--input-size {args.input_size}: the model in {args.model_dir} takes {height}x{width} "
                             f"crops (its pose.json)")
        dataset = COCOKeypointDataset(ann_file, image_dir, (width, height), train=False, boxes=boxes,
                                      det_score_thr=args.det_score_thr, udp=pose["udp"], flip_pairs=args.flip_pairs)
        if pose["keypoint_names"] != dataset.info.names:
            raise ValueError(f"--model-dir {args.model_dir}: finds {len(pose['keypoint_names'])} keypoints "
                             f"({', '.join(pose['keypoint_names'][:3])}, ...), {ann_file} has "
                             f"{dataset.info.num_joints} ({', '.join(dataset.info.names[:3])}, ...)")
        predictor = create_predictor(args.model_dir, args.backend, args.device, args.threads, args.precision,
                                     verbose=args.verbose)
        model, name = PredictorModel(predictor), f"{pose['model']} ({predictor.describe()})"
        decode, dark_kernel, decoding = chosen_decoding(args, pose, "export")
    else:
        input_size = parse_input_size(args.input_size) if args.input_size else None
        weights = resolve_path_or_url(args.weights, what="--weights")
        state, record = read_checkpoint(weights, "--weights")
        if record is not None:  # crops as the model was trained on them, unless --input-size overrides
            input_size = input_size or tuple(record["input_size"][::-1])
        dataset = COCOKeypointDataset(ann_file, image_dir, input_size or (192, 256), train=False, boxes=boxes,
                                      det_score_thr=args.det_score_thr, udp=args.udp or bool(record and record["udp"]),
                                      flip_pairs=args.flip_pairs)
        model, record = build_from_checkpoint(state, record, f"--weights {weights}", args.model, input_size,
                                              dataset.info, args.udp or None)
        height, width = record["input_size"]
        name = record["model"] + (" (QAT)" if record["qat"] else "")
        decode, dark_kernel, decoding = chosen_decoding(args, record, "checkpoint")
    print(f"{name} on {len(dataset)} boxes ({'GT' if boxes == 'gt' else boxes}), input {height}x{width}, "
          f"{decoding}, flip {'on' if args.flip and dataset.info.flip else 'off'}")
    results, stats = evaluate_model(model, dataset, args.batch_size, args.flip, decode, dark_kernel,
                                    args.in_vis_thre, args.oks_thre, args.soft_nms, args.workers, per_joint=True)
    if args.out:
        write_json_atomically(results, args.out)
        print(f"wrote {len(results)} results to {args.out}")
    return stats


def main(argv=None):
    args = parse_args(argv)
    if not (args.ann or args.data):
        raise SystemExit("error: give --data DIR or --ann FILE")
    ann_file = _existing(args.ann or os.path.join(args.data, "annotations", "person_keypoints_val2017.json"),
                         "annotation file (--ann/--data)")
    try:
        if args.results:
            results = _read_results(_existing(args.results, "results file (--results)"))
            try:
                stats = coco_keypoint_stats(ann_file, results, per_joint=True)
            except ValueError as e:
                raise ValueError(f"--results {args.results}: {e}") from None
        else:
            stats = _predict(args, ann_file)
    except (ValueError, OSError) as e:  # bad input found by data.py or here: one line, no traceback
        raise SystemExit("error: " + " ".join(str(e).split()))
    for name in STAT_NAMES:
        print(f"{name:<7}: {stats[name]:.4f}")
    print_per_joint_table(*stats["per_joint"])
    print(f"AP: {stats['AP']:.3f}")


if __name__ == "__main__":
    run_script(main)
