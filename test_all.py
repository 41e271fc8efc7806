"""The whole test suite: python -m pytest -q test_all.py (CPU only)."""
import contextlib
import ctypes
import gc
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import zipfile

import cv2
import numpy as np
import pytest

import model as M
import paddle
import paddle.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ASSETS = os.path.join(HERE, "assets")  # the real data the repository carries (assets/README.md)


def run_script(*args, check=True):
    """Run one of the project's scripts as a user would (stderr carries Paddle's import warnings)."""
    r = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return r


def settle_batch_norm(model, shape, steps=2):
    """Give BN non-trivial running statistics (fresh ones are 0/1), then switch to eval."""
    model.train()
    with paddle.no_grad():
        for i in range(steps):
            model(paddle.to_tensor(np.random.RandomState(i).randn(*shape).astype("float32")))
    model.eval()
    return model


def outputs(model, x):
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


# ====================================================================================================
# model.py

PARAMS = dict(hrnet_w32=28_536_113, hrnet_w48=63_595_745, lite_hrnet_18=1_130_769, lite_hrnet_30=1_763_717)
MACS = dict(hrnet_w32="7.645G", hrnet_w48="15.692G", lite_hrnet_18="0.242G", lite_hrnet_30="0.386G")
# state-dict entries incl. BN buffers (REFERENCE §6): official PyTorch (with num_batches_tracked) and PaddleDetection
ENTRIES = dict(hrnet_w32=(1754, 1462), lite_hrnet_18=(1418, 1214), lite_hrnet_30=(2360, 2023))


@pytest.fixture(scope="module")
def small_models():
    paddle.seed(0)
    return {n: settle_batch_norm(M.build_model(n), (2, 3, 128, 96)) for n in ("hrnet_w32", "lite_hrnet_18")}


@pytest.mark.parametrize("name", M.MODEL_NAMES)
def test_param_counts_are_the_official_ones(name):
    assert M.count_params(M.build_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", ["hrnet_w32", "lite_hrnet_18"])
@pytest.mark.parametrize("hw", [(256, 192), (384, 288)])
def test_output_is_quarter_resolution_heatmaps(name, hw, small_models):
    y = outputs(small_models[name], np.zeros((1, 3, *hw), np.float32))
    assert y.shape == (1, 17, hw[0] // 4, hw[1] // 4)


def test_other_models_and_joint_counts_shapes():
    for name in ("hrnet_w48", "lite_hrnet_30"):
        m = M.build_model(name, num_joints=14)
        m.eval()
        assert outputs(m, np.zeros((2, 3, 128, 96), np.float32)).shape == (2, 14, 32, 24)


def test_model_summary_cli_prints_params_and_macs_last():
    for name in M.MODEL_NAMES:
        lines = run_script("model.py", "--model", name, "--input-size", "256x192").stdout.strip().splitlines()
        assert lines[-2] == f"params: {PARAMS[name]}"
        assert lines[-1] == f"MACs: {MACS[name]}"
    out = run_script("model.py", "--model", "lite_hrnet_18").stdout
    assert "MACs executed by this port: 0.199G" in out  # the fuse term the official code evaluates twice


def test_macs_scale_with_input_area():
    m = M.build_model("hrnet_w32")
    small, _ = M.count_macs(m, (192, 256))
    large, _ = M.count_macs(m, (288, 384))
    assert abs(large / small - 2.25) < 1e-9  # conv MACs are proportional to output positions


def test_bad_input_size_is_one_line_error():
    r = run_script("model.py", "--input-size", "250x192", check=False)
    assert r.returncode != 0 and "error: --input-size 250x192" in r.stderr and "Traceback" not in r.stderr


def test_resampling_matches_paddle_interpolate():
    x = paddle.to_tensor(np.random.RandomState(0).randn(2, 3, 8, 6).astype("float32"))
    np.testing.assert_allclose(M.upsample_nearest(x, 4).numpy(),
                               F.interpolate(x, scale_factor=4, mode="nearest").numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(M.resize_bilinear_align_corners(x, 16, 12).numpy(),
                               F.interpolate(x, size=(16, 12), mode="bilinear", align_corners=True).numpy(),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("height, width, stride", [(7, 5, 1), (9, 6, 2), (40, 30, 1)])
def test_depthwise_conv_computes_paddles_depthwise_op(height, width, stride):
    """Small maps take the unfold + matmul path, large ones (40x30) Paddle's op: output and both gradients
    are those of F.conv2d with groups = channels, and the quantization-aware twin's output that of its
    generic conv."""
    paddle.seed(0)
    layer = M.DepthwiseConv2D(6, stride)
    x = paddle.to_tensor(np.random.RandomState(1).randn(3, 6, height, width).astype("float32"), stop_gradient=False)
    weight = paddle.to_tensor(layer.weight.numpy(), stop_gradient=False)
    assert (height * width <= layer.matmul_positions) == (height < 40)
    y, y_op = layer(x), F.conv2d(x, weight, stride=stride, padding=1, groups=6)
    upstream = paddle.to_tensor(np.random.RandomState(2).randn(*y_op.shape).astype("float32"))
    grads = paddle.grad([y], [x, layer.weight], upstream)
    grads_op = paddle.grad([y_op], [x, weight], upstream)
    np.testing.assert_allclose(y.numpy(), y_op.numpy(), rtol=1e-5, atol=1e-5)
    for g, g_op in zip(grads, grads_op):
        np.testing.assert_allclose(g.numpy(), g_op.numpy(), rtol=1e-5, atol=1e-5)
    quantized, generic = M.QuantConv2D(layer, "dw", pact=False), M.QuantConv2D(layer, "dw", pact=False)
    generic.depthwise = False  # QuantConv2D's F.conv2d, as for any other conv
    assert quantized.depthwise
    np.testing.assert_allclose(quantized(x).numpy(), generic(x).numpy(), rtol=1e-5, atol=1e-5)


def three_branch_layer(layer_class, seed):
    """layer_class([40, 80, 160]) built after paddle.seed(seed), BatchNorm statistics settled, and three random
    inputs at 32x24, 16x12 and 8x6."""
    paddle.seed(seed)
    layer = settle_batch_norm(_Branches(layer_class([40, 80, 160])), (2, 160, 32, 24)).module
    xs = [paddle.to_tensor(np.random.RandomState(i).randn(2, c, 32 // 2 ** i, 24 // 2 ** i).astype("float32"))
          for i, c in enumerate([40, 80, 160])]
    return layer, xs


def test_lite_fuse_reproduces_the_official_in_place_loop():
    """Run the official loop literally, with in-place adds that alias out[0], and compare."""
    module, xs = three_branch_layer(M.LiteHRModule, seed=1)
    with paddle.no_grad():
        out = module.layers(xs)
        def fuse(i, j, x):  # the official fuse_layers[i][j] ends with nn.Upsample(scale 2^(j-i)) when j > i
            y = module.fuse_layers[i][j](x)
            return F.interpolate(y, scale_factor=2 ** (j - i), mode="nearest") if j > i else y
        official = []
        for i in range(3):
            y = out[0] if i == 0 else fuse(i, 0, out[0])
            for j in range(3):
                y.add_(out[j] if i == j else fuse(i, j, out[j]))
            official.append(F.relu(y))
        ours = module(xs)
    for a, b in zip(official, ours):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_sum_of_lower_branches_equals_upsampling_each_term_directly():
    """Accumulating in x2 steps from the lowest resolution == interpolating every term to branch i, then summing."""
    rng = np.random.RandomState(6)
    xs = [paddle.to_tensor(rng.randn(2, 3, 16 // 2 ** j, 24 // 2 ** j).astype("float32")) for j in range(4)]
    row = [None] + [lambda x, s=s: x * s for s in (1.5, -2.0, 0.25)]  # stand-ins for the conv + BN terms
    for i in range(3):
        terms = [F.interpolate(row[j](xs[j]), scale_factor=2 ** (j - i), mode="nearest") for j in range(i + 1, 4)]
        np.testing.assert_allclose(M.sum_of_lower_branches(row, xs, i).numpy(), sum(terms).numpy(),
                                   rtol=1e-6, atol=1e-6)
    assert M.sum_of_lower_branches(row, xs, 3) is None


def test_hrnet_fuse_matches_the_official_sum():
    """The official HighResolutionModule fuse: y_i = sum_j fuse_layers[i][j](x_j) in branch order, j > i upsampled."""
    module, xs = three_branch_layer(M.HighResolutionModule, seed=4)
    with paddle.no_grad():
        out = [branch(x) for branch, x in zip(module.branches, xs)]
        official = []
        for i, row in enumerate(module.fuse_layers):
            terms = [out[j] if i == j else row[j](out[j]) for j in range(3)]
            terms = [F.interpolate(t, scale_factor=2 ** (j - i), mode="nearest") if j > i else t
                     for j, t in enumerate(terms)]
            official.append(F.relu(sum(terms[1:], terms[0])))
        ours = module(xs)
    for a, b in zip(official, ours):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5 * np.abs(a.numpy()).max())


def test_lite_channel_weighting_matches_the_official_formulas():
    """Mean-pooled spatial weighting, cross-resolution weights upsampled (factor 1 included) by interpolation."""
    block, xs = three_branch_layer(M.ConditionalChannelWeighting, seed=5)
    crw = block.cross_resolution_weighting
    with paddle.no_grad():
        halves = [paddle.chunk(x, 2, axis=1) for x in xs]
        x2 = [h[1] for h in halves]
        pooled = paddle.concat([F.adaptive_avg_pool2d(x, x2[-1].shape[2:]) for x in x2], axis=1)
        gates = paddle.split(crw.conv2(crw.conv1(pooled)), crw.channels, axis=1)
        x2 = [x * F.interpolate(a, size=x.shape[2:], mode="nearest") for x, a in zip(x2, gates)]
        x2 = [dw(x) for x, dw in zip(x2, block.depthwise_convs)]
        x2 = [x * sw.conv2(sw.conv1(x.mean(axis=[2, 3], keepdim=True))) for x, sw in zip(x2, block.spatial_weighting)]
        official = [F.channel_shuffle(paddle.concat([h[0], x], axis=1), 2) for h, x in zip(halves, x2)]
        ours = block(xs)
    for a, b in zip(official, ours):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5 * np.abs(a.numpy()).max())


class _Branches(paddle.nn.Layer):
    """Feeds one tensor as three branches (strided views) so settle_batch_norm can drive a module."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module([x[:, :40], x[:, :80, ::2, ::2], x[:, :, ::4, ::4]])[0]


def official_state_dict(model):
    """This project's state in the official PyTorch layout (BN buffer names, num_batches_tracked)."""
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("._mean"):
            state[k[:-len("_mean")] + "running_mean"] = v.numpy()
            state[k[:-len("_mean")] + "num_batches_tracked"] = np.array(1000, np.int64)
        elif k.endswith("._variance"):
            state[k[:-len("_variance")] + "running_var"] = v.numpy()
        else:
            state[k] = v.numpy()
    return state


@pytest.mark.parametrize("name", ["hrnet_w32", "lite_hrnet_18", "lite_hrnet_30"])
def test_official_and_paddledetection_layouts_load_and_agree(name, tmp_path):
    paddle.seed(2)
    src = settle_batch_norm(M.build_model(name), (2, 3, 128, 96))
    x = np.random.RandomState(3).randn(2, 3, 128, 96).astype("float32")
    ref = outputs(src, x)

    official = official_state_dict(src)
    assert len(official) == ENTRIES[name][0]
    if name.startswith("lite"):
        official = {"state_dict": official, "meta": {"epoch": 210}}  # mmpose checkpoint
    dst = M.build_model(name)
    dst.set_state_dict(M.convert_state_dict(
        official["state_dict"] if name.startswith("lite") else official, dst)[0])
    dst.eval()
    np.testing.assert_array_equal(outputs(dst, x), ref)

    pd_state = {M.paddledetection_key(k): v for k, v in src.state_dict().items()}
    assert len(pd_state) == ENTRIES[name][1]
    paddle.save(pd_state, str(tmp_path / "pd.pdparams"))
    dst = M.load_weights(M.build_model(name), str(tmp_path / "pd.pdparams"))
    dst.eval()
    np.testing.assert_array_equal(outputs(dst, x), ref)


def test_paddledetection_names_follow_the_reference_table():
    table = {  # REFERENCE §6.1 / §6.2 samples (official key -> PaddleDetection key)
        "conv1.weight": "backbone.conv_layer1_1.conv.weight",
        "bn1._variance": "backbone.conv_layer1_1.norm._variance",
        "layer1.0.downsample.1.bias": "backbone.la1.block_layer2_1.conv_down.norm.bias",
        "layer1.3.conv3.weight": "backbone.la1.block_layer2_4.conv3.conv.weight",
        "transition1.0.0.weight": "backbone.tr1.transition_tr1_layer_1.conv.weight",
        "transition1.1.0.1._mean": "backbone.tr1.transition_tr1_layer_2.norm._mean",
        "transition3.3.0.1.weight": "backbone.tr3.transition_tr3_layer_4.norm.weight",
        "stage2.0.branches.1.3.bn2._variance":
            "backbone.st2.stage_st2_1.branches_func.bb_st2_1_branch_layer_2_4.conv2.norm._variance",
        "stage3.3.branches.2.0.conv1.weight":
            "backbone.st3.stage_st3_4.branches_func.bb_st3_4_branch_layer_3_1.conv1.conv.weight",
        "stage2.0.fuse_layers.0.1.1._mean": "backbone.st2.stage_st2_1.fuse_func.residual_st2_1_layer_1_2.norm._mean",
        "stage4.0.fuse_layers.3.0.2.1.weight":
            "backbone.st4.stage_st4_1.fuse_func.residual_st4_1_layer_4_1_3.norm.weight",
        "stage4.2.fuse_layers.0.3.0.weight": "backbone.st4.stage_st4_3.fuse_func.residual_st4_3_layer_1_4.conv.weight",
        "final_layer.bias": "final_conv.bias",
        "backbone.stem.conv1.bn._mean": "backbone.stem.conv1.norm._mean",
        "backbone.transition0.0.3._variance": "backbone.transition0.0.3._variance",
        "backbone.head_layer.projects.0.pointwise_conv.bn.weight":
            "backbone.head_layer.projects.0.pointwise_conv.norm.weight",
        "keypoint_head.final_layer.weight": "final_conv.weight",
    }
    for ours, pd in table.items():
        assert M.paddledetection_key(ours) == pd


def test_round_trip_and_training_checkpoint(small_models, tmp_path):
    m = small_models["lite_hrnet_18"]
    x = np.random.RandomState(4).randn(1, 3, 128, 96).astype("float32")
    M.save_checkpoint(m.state_dict(), str(tmp_path / "w.pdparams"))
    M.save_checkpoint({"model": m.state_dict(), "epoch": 3}, str(tmp_path / "last.pdparams"))
    for f in ("w.pdparams", "last.pdparams"):
        loaded = M.load_weights(M.build_model("lite_hrnet_18"), str(tmp_path / f))
        loaded.eval()
        np.testing.assert_array_equal(outputs(loaded, x), outputs(m, x))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_wrong_checkpoints_give_clear_errors(small_models, tmp_path):
    path = str(tmp_path / "lite18.pdparams")
    M.save_checkpoint(small_models["lite_hrnet_18"].state_dict(), path)
    target = M.build_model("lite_hrnet_30")
    before = {k: v.numpy().copy() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"does not fit LiteHRNet: \d+ missing"):
        M.load_weights(target, path)
    assert all(np.array_equal(before[k], v.numpy()) for k, v in target.state_dict().items())  # untouched
    with pytest.raises(ValueError, match=r"1 wrong-shaped|2 wrong-shaped"):
        M.load_weights(M.build_model("lite_hrnet_18", num_joints=14), path)
    with pytest.raises(ValueError, match="missing"):
        M.load_weights(M.build_model("hrnet_w32"), path)
    r = run_script("model.py", "--model", "hrnet_w32", "--convert", path, str(tmp_path / "x.pdparams"), check=False)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith(f"error: --convert {path}: "
                                                                               f"checkpoint does not fit HRNet")
    with pytest.raises(FileNotFoundError, match="nope.pdparams"):
        M.load_weights(target, str(tmp_path / "nope.pdparams"))


def test_imagenet_backbone_loads_with_counted_skips(small_models, tmp_path):
    src = small_models["hrnet_w32"]
    state = {k: v for k, v in official_state_dict(src).items() if not k.startswith("final_layer.")}
    state.update({"incre_modules.0.0.conv1.weight": np.zeros((32, 32, 1, 1), np.float32),
                  "final_layer.0.weight": np.zeros((2048, 1024, 1, 1), np.float32),
                  "classifier.weight": np.zeros((1000, 2048), np.float32),
                  "stage4.2.fuse_layers.1.0.0.0.weight": np.zeros((64, 32, 3, 3), np.float32)})
    paddle.save(state, str(tmp_path / "imagenet.pdparams"))
    with pytest.raises(ValueError, match="4 unexpected"):
        M.load_weights(M.build_model("hrnet_w32"), str(tmp_path / "imagenet.pdparams"))
    lines = []
    m = M.load_weights(M.build_model("hrnet_w32"), str(tmp_path / "imagenet.pdparams"), pretrained=True,
                       log=lines.append)
    assert len(lines) == 1 and "skipped 4" in lines[0]
    np.testing.assert_array_equal(m.stage4[2].fuse_layers[0][3][0].weight.numpy(),
                                  src.stage4[2].fuse_layers[0][3][0].weight.numpy())


def test_pth_without_torch_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "pose_hrnet_w32_256x192.pth"
    path.write_bytes(b"not really")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(SystemExit, match="pip install torch"):
        M.load_weights(M.build_model("lite_hrnet_18"), str(path))


@pytest.mark.xdist_group("family")
@pytest.mark.parametrize("name", ["hrnet_w32", "lite_hrnet_18"])
def test_exported_model_runs_in_paddle_inference_with_onednn(name, family_exports):
    import export
    m, folder = family_exports[name]  # export.export_model's files
    assert os.path.exists(os.path.join(folder, "model.json"))  # PIR program format
    run = export.create_predictor(folder, "paddle", device="cpu", onednn=True)
    # global pooling written as mean() would run oneDNN's reference reduction kernel, ~10x slower than pooling
    assert '"1.mean"' not in open(os.path.join(folder, "model.json")).read()
    for batch in (1, 3):  # dynamic batch
        x = np.random.RandomState(batch).randn(batch, 3, 64, 64).astype("float32")
        ref = outputs(m, x)  # float32 sums in oneDNN's order: export.py's own --tolerance
        assert np.abs(run(x) - ref).max() / np.abs(ref).max() < 1e-4


# ====================================================================================================
# data.py: records, geometry, targets, the synthetic set, loading, bad input, downloads

import data  # noqa: E402

TINY_ANN = os.path.join(ASSETS, "coco_tiny", "annotations", "person_keypoints_val2017.json")
TINY_IMAGES = os.path.join(ASSETS, "coco_tiny", "val2017")
TINY_DETS = os.path.join(ASSETS, "coco_tiny", "person_detection_results", "COCO_val2017_detections_AP_H_56_person.json")
MINI_ANN = os.path.join(ASSETS, "coco_mini_train", "annotations", "person_keypoints_train2017.json")
MINI_IMAGES = os.path.join(ASSETS, "coco_mini_train", "train2017")
NO_AUGMENT = dict(scale_factor=0.0, rot_factor=0, rot_prob=0.0, half_body_prob=0.0, flip_prob=0.0)


def independent_count(ann_file):
    """Usable instances counted straight from the JSON: non-crowd, some keypoint > 0, box valid after clipping
    (a missing area is the box's, a missing iscrowd 0, missing keypoints none, as data.py fills them in)."""
    coco = json.load(open(ann_file))
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    count = 0
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        box_ok = ann.get("area", w * h) > 0 and min(width - 1, max(0, x) + max(0, w - 1)) >= max(0, x) \
            and min(height - 1, max(0, y) + max(0, h - 1)) >= max(0, y)
        count += not ann.get("iscrowd", 0) and max(ann["keypoints"] or [0]) > 0 and box_ok
    return count


def write_coco(folder, images, annotations, category=None, ext=".png"):
    """images: list of HxWx3 uint8 arrays -> folder/images/<id>.png and folder/ann.json."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    entries = []
    for i, image in enumerate(images, start=1):
        cv2.imwrite(os.path.join(folder, "images", f"{i:012d}{ext}"), image)
        entries.append(dict(id=i, file_name=f"{i:012d}{ext}", width=image.shape[1], height=image.shape[0]))
    anns = [dict(dict(id=k + 1, iscrowd=0, category_id=1, area=a["bbox"][2] * a["bbox"][3]), **a)
            for k, a in enumerate(annotations)]
    coco = dict(images=entries, annotations=anns, categories=[category or data.COCO_PERSON_CATEGORY])
    path = os.path.join(folder, "ann.json")
    json.dump(coco, open(path, "w"))
    return path, os.path.join(folder, "images")


def dot_code(k):
    return 20 + 12 * k  # red value of joint k's disc


def coded_dots_dataset(tmp_path, **kwargs):
    """One 400x400 PNG with a distinctly coloured disc under each of the 17 joints (lossless, so colours survive)."""
    image = np.full((400, 400, 3), 90, np.uint8)
    keypoints = []
    for k in range(17):
        x, y = 60 + (k % 4) * 70, 40 + (k // 4) * 70
        cv2.circle(image, (x, y), 14, (100, 255 - dot_code(k), dot_code(k)), -1)  # BGR
        keypoints += [x, y, 2]
    ann, images = write_coco(str(tmp_path), [image], [dict(image_id=1, bbox=[40, 20, 260, 330], keypoints=keypoints,
                                                         num_keypoints=17)])
    return data.COCOKeypointDataset(ann, images, "256x192", **kwargs)


# ------------------------------------------------------------------------------------------------- records

def test_gt_record_counts_match_json():
    for ann, images in ((TINY_ANN, TINY_IMAGES), (MINI_ANN, MINI_IMAGES)):
        dataset = data.COCOKeypointDataset(ann, images, "256x192", train=False)
        assert len(dataset) == independent_count(ann)
        assert dataset.num_skipped == len(json.load(open(ann))["annotations"]) - len(dataset)
    assert len(data.COCOKeypointDataset(MINI_ANN, MINI_IMAGES, "256x192", train=True)) == 74  # assets/README.md


def test_detection_records_and_threshold():
    dets = json.load(open(TINY_DETS))
    for thr in (0.0, 0.5):
        dataset = data.COCOKeypointDataset(TINY_ANN, TINY_IMAGES, "256x192", train=False, boxes=TINY_DETS,
                                           det_score_thr=thr)
        assert len(dataset) == sum(d["category_id"] == 1 and d["score"] >= thr for d in dets)
        image, target, weight, index = dataset[0]
        assert image.shape == (3, 256, 192) and not target.any() and not weight.any() and index == 0
        first = next(d for d in dets if d["category_id"] == 1 and d["score"] >= thr)
        assert dataset.record(0)["score"] == pytest.approx(first["score"])


def test_box_cleaning_and_center_scale():
    coco = json.load(open(TINY_ANN))
    ann = next(a for a in coco["annotations"] if not a["iscrowd"] and max(a["keypoints"]) > 0)
    dataset = data.COCOKeypointDataset(TINY_ANN, TINY_IMAGES, "256x192", train=False)
    x, y, w, h = ann["bbox"]  # inside the image: cleaning only drops 1 px of width and height (official quirk)
    center, scale = data.box_to_center_scale([x, y, w - 1, h - 1], 0.75)
    np.testing.assert_array_equal(dataset.record(0)["center"], center)
    np.testing.assert_array_equal(dataset.record(0)["scale"], scale)
    center, scale = data.box_to_center_scale([10, 20, 30, 80], 0.75)
    np.testing.assert_allclose(center, [25, 60])
    np.testing.assert_allclose(scale, [60 / 200 * 1.25, 80 / 200 * 1.25])
    assert center.dtype == scale.dtype == np.float32


def test_eval_crop_equals_crop_and_normalize():
    dataset = data.COCOKeypointDataset(TINY_ANN, TINY_IMAGES, "256x192", train=False)
    record = dataset.record(3)
    expected = data.crop_and_normalize(data.read_image_rgb(record["image_file"]), record["center"], record["scale"],
                                       0, (192, 256))
    np.testing.assert_array_equal(dataset[3][0], expected)


def test_input_size_and_sigma_and_augmentation_defaults():
    assert data.parse_input_size("256x192") == (192, 256)
    assert data.default_sigma((192, 256)) == 2 and data.default_sigma("384x288") == 3
    for bad in ("256x190", "256", "axb"):
        with pytest.raises(ValueError, match="--input-size"):
            data.parse_input_size(bad)
    assert data.augmentation_defaults("hrnet_w32")["scale_factor"] == 0.35
    assert data.augmentation_defaults("lite_hrnet_18")["rot_factor"] == 30
    with pytest.raises(ValueError, match="--model"):
        data.augmentation_defaults("resnet50")


# ------------------------------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("rotation", [0.0, 30.0, -70.0])
@pytest.mark.parametrize("udp", [False, True])
def test_warped_dot_lands_on_transformed_joint(rotation, udp):
    image = np.zeros((300, 400, 3), np.uint8)
    joint = np.array([233.0, 141.0])
    cv2.circle(image, (233, 141), 3, (255, 255, 255), -1)
    center, scale = data.box_to_center_scale([150, 50, 160, 220], 0.75)
    matrix = data._crop_matrix(center, scale, rotation, (192, 256), udp)
    crop = cv2.warpAffine(image, matrix, (192, 256), flags=cv2.INTER_LINEAR)[..., 0].astype(np.float64)
    ys, xs = np.nonzero(crop > 0)
    centroid = np.array([np.average(xs, weights=crop[ys, xs]), np.average(ys, weights=crop[ys, xs])])
    np.testing.assert_allclose(data.affine_transform(joint[None], matrix)[0], centroid, atol=0.25)
    back = data.affine_transform(data.affine_transform(joint[None], matrix), cv2.invertAffineTransform(matrix))
    np.testing.assert_allclose(back[0], joint, atol=1e-4)


@pytest.mark.parametrize("udp", [False, True])
def test_transform_preds_inverts_the_crop(udp):
    center, scale = data.box_to_center_scale([150, 50, 160, 220], 0.75)
    joints = np.array([[160.0, 60.0], [233.5, 141.25], [300.0, 260.0]])
    in_heatmap = data.affine_transform(joints, data._crop_matrix(center, scale, 0, (48, 64), udp))
    np.testing.assert_allclose(data.transform_preds(in_heatmap, center, scale, (48, 64), udp=udp), joints, atol=1e-3)


@pytest.mark.parametrize("udp", [False, True])
def test_augmented_targets_sit_on_their_own_joint(tmp_path, udp):
    """Each joint's disc has its own colour: the crop pixel under target k's peak must carry k's colour,
    or its mirror partner's when the sample was flipped (pairs swapped with the image)."""
    stride = (191 / 47, 255 / 63) if udp else (4, 4)
    for flip_prob in (0.0, 1.0):
        dataset = coded_dots_dataset(tmp_path / str(flip_prob), train=True, udp=udp, flip_prob=flip_prob, seed=3,
                                     rot_prob=1.0)
        expected = [dataset._flip_order[k] if flip_prob else k for k in range(17)]
        checked = 0
        for epoch in range(6):
            dataset.set_epoch(epoch)
            image, target, weight, _ = dataset[0]
            red = (image[0] * data.IMAGENET_STD[0] + data.IMAGENET_MEAN[0]) * 255
            for k in range(17):
                if weight[k] == 0 or target[k].max() < 0.9:  # skip clipped tails: the peak must be the joint
                    continue
                y, x = np.unravel_index(target[k].argmax(), target[k].shape)
                px, py = int(round(x * stride[0])), int(round(y * stride[1]))
                if 0 <= px < 192 and 0 <= py < 256:
                    assert round((red[py, px] - 20) / 12) == expected[k], (epoch, k)
                    checked += 1
        assert checked > 40


def test_flip_twice_is_identity(tmp_path):
    """Mirror the image and its labels on disk, let the dataset flip again: same sample as the original."""
    plain = coded_dots_dataset(tmp_path / "a", train=True, **dict(NO_AUGMENT))
    mirrored_joints = plain.record(0)["joints"].copy()
    mirrored_joints[:, 0] = 400 - mirrored_joints[:, 0] - 1
    mirrored_joints = mirrored_joints[plain._flip_order]
    image = cv2.imread(plain.record(0)["image_file"])[:, ::-1]
    x, y, w, h = 40, 20, 260, 330
    ann, images = write_coco(str(tmp_path / "b"), [image], [dict(
        image_id=1, bbox=[400 - x - w, y, w, h], num_keypoints=17,
        keypoints=[float(v) for v in np.column_stack([mirrored_joints[:, :2], np.full(17, 2)]).ravel()])])
    flipped = data.COCOKeypointDataset(ann, images, "256x192", train=True, **dict(NO_AUGMENT, flip_prob=1.0))
    a, b = plain[0], flipped[0]
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    # cv2.warpAffine snaps sample positions to 1/32 px, so mirrored sampling may differ by a few grey levels
    # at disc edges (< 1/32 of the 0..255 contrast = 0.14 after /std), and only at a handful of pixels.
    diff = np.abs(a[0] - b[0])
    assert diff.max() < 0.14 and (diff > 0).mean() < 0.001


# ------------------------------------------------------------------------------------------------- targets

def naive_msra_target(joints, vis, input_size, heatmap_size, sigma):
    """The MSRA formula written over the whole map (independent of data.py's windowed paste)."""
    width, height = heatmap_size
    target = np.zeros((len(joints), height, width), np.float32)
    weight = np.array(vis, np.float32).reshape(-1, 1)
    ys, xs = np.mgrid[0:height, 0:width]
    radius = 3 * sigma
    for k, (x, y) in enumerate(joints):
        mu_x, mu_y = int(x / (input_size[0] / width) + 0.5), int(y / (input_size[1] / height) + 0.5)
        if mu_x - radius >= width or mu_y - radius >= height or mu_x + radius + 1 < 0 or mu_y + radius + 1 < 0:
            weight[k] = 0
            continue
        window = (np.abs(xs - mu_x) <= radius) & (np.abs(ys - mu_y) <= radius)
        gauss = np.exp(-((xs - mu_x) ** 2 + (ys - mu_y) ** 2).astype(np.float32) / np.float32(2 * sigma ** 2))
        if weight[k] > 0.5:
            target[k][window] = gauss[window]
    return target, weight


def test_msra_target_matches_formula_bit_for_bit():
    rng = np.random.default_rng(0)
    joints = rng.uniform([-40, -40], [232, 296], (200, 2))
    vis = (rng.random(200) < 0.8).astype(np.float32)
    target, weight = data.generate_target(joints, vis, (192, 256), (48, 64), 2.0)
    expected_target, expected_weight = naive_msra_target(joints, vis, (192, 256), (48, 64), 2.0)
    np.testing.assert_array_equal(target, expected_target)
    np.testing.assert_array_equal(weight, expected_weight)
    inside = (weight[:, 0] > 0) & (joints[:, 0] > 0) & (joints[:, 1] > 0) & (joints[:, 0] < 190) & (joints[:, 1] < 254)
    for k in np.nonzero(inside)[0]:
        y, x = np.unravel_index(target[k].argmax(), target[k].shape)
        assert (x, y) == (int(joints[k, 0] / 4 + 0.5), int(joints[k, 1] / 4 + 0.5)) and target[k, y, x] == 1
    assert target.dtype == weight.dtype == np.float32 and weight.shape == (200, 1)


def test_udp_target_round_trip_is_sub_pixel_exact():
    joints = np.array([[97.37, 130.81], [20.05, 240.6], [150.9, 11.3]])
    target, weight = data.generate_target(joints, np.ones(3), (192, 256), (48, 64), 2.0, udp=True)
    stride = np.array([191 / 47, 255 / 63])
    for k, joint in enumerate(joints):
        log_map = np.log(np.maximum(target[k].astype(np.float64), 1e-30))
        y, x = np.unravel_index(target[k].argmax(), target[k].shape)
        # log of a Gaussian is a parabola: one Newton step from the argmax lands on the centre exactly
        dx = (log_map[y, x + 1] - log_map[y, x - 1]) / 2 / (log_map[y, x + 1] - 2 * log_map[y, x] + log_map[y, x - 1])
        dy = (log_map[y + 1, x] - log_map[y - 1, x]) / 2 / (log_map[y + 1, x] - 2 * log_map[y, x] + log_map[y - 1, x])
        decoded = np.array([x - dx, y - dy]) * stride
        assert np.abs(decoded - joint).max() < 0.05
    assert weight.ravel().tolist() == [1, 1, 1]


# ------------------------------------------------------------------------------------------------- synthetic set

def test_synthetic_dataset_is_valid_coco_with_perfect_gt_ap(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    out = data.make_synthetic_dataset(str(tmp_path / "synth"), num_train=20, num_val=10, seed=1)
    for split in ("train", "val"):
        gt = COCO(os.path.join(out, "annotations", f"person_keypoints_{split}2017.json"))
        anns = gt.loadAnns(gt.getAnnIds())
        assert len(gt.getImgIds()) == (20 if split == "train" else 10) and len(anns) >= len(gt.getImgIds())
        assert all(a["area"] > 0 and a["num_keypoints"] > 0 for a in anns)
        image = cv2.imread(os.path.join(out, f"{split}2017", gt.loadImgs(gt.getImgIds()[0])[0]["file_name"]))
        assert image.shape == (240, 320, 3)
        results = [dict(image_id=a["image_id"], category_id=1, keypoints=a["keypoints"], score=1.0) for a in anns]
        evaluator = COCOeval(gt, gt.loadRes(results), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert evaluator.stats[0] == pytest.approx(1.0)
    flags = np.concatenate([np.array(a["keypoints"][2::3]) for a in gt.loadAnns(gt.getAnnIds())])
    assert set(flags.tolist()) <= {0, 1, 2} and (flags == 2).mean() > 0.6
    dets = os.path.join(out, "person_detection_results", "COCO_val2017_detections_AP_H_56_person.json")
    val = data.COCOKeypointDataset(os.path.join(out, "annotations", "person_keypoints_val2017.json"),
                                   os.path.join(out, "val2017"), "128x96", train=False, boxes=dets)
    assert len(val) >= len(anns)


def test_data_loader_batches_as_paddle_does_and_workers_trim_before_each_batch(monkeypatch):
    dataset = paddle.io.Subset(data.COCOKeypointDataset(MINI_ANN, MINI_IMAGES, "128x96", train=True), range(16))
    plain = [[t.numpy() for t in batch] for batch in paddle.io.DataLoader(dataset, batch_size=8, num_workers=2)]
    ours = [[t.numpy() for t in batch] for batch in data.data_loader(dataset, 2, batch_size=8)]
    for a, b in zip(plain, ours, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y)
    trims = []  # in this process, as a worker would: one trim per batch; outside workers none
    monkeypatch.setattr(data, "MALLOC_TRIM", lambda pad: trims.append(pad))
    [list(batch) for batch in data.data_loader(dataset, 0, batch_size=8)]
    assert trims == []
    monkeypatch.setattr(paddle.io, "get_worker_info", lambda: object())
    [list(batch) for batch in data.data_loader(dataset, 0, batch_size=8)]
    assert trims == [0, 0]


def test_synthetic_dataset_is_deterministic(tmp_path):
    def files(folder):
        return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
                for d, _, names in os.walk(folder) for f in names}
    a = files(data.make_synthetic_dataset(str(tmp_path / "a"), 6, 3, seed=5, workers=1))
    b = files(data.make_synthetic_dataset(str(tmp_path / "b"), 6, 3, seed=5, workers=2))
    c = files(data.make_synthetic_dataset(str(tmp_path / "c"), 6, 3, seed=6, workers=2))
    assert len(a) == 6 + 3 + 3 and a == b and a != c


# ------------------------------------------------------------------------------------------------- loading

def test_same_seed_same_samples_and_workers_do_not_matter():
    def batches(num_workers, seed=0, epoch=0):
        dataset = data.COCOKeypointDataset(MINI_ANN, MINI_IMAGES, "128x96", train=True, seed=seed)
        dataset.set_epoch(epoch)
        # the first 16 samples only, read to the end: a multi-worker loader left half-read keeps its worker
        # processes and a blocked reader thread for the rest of the test session
        loader = paddle.io.DataLoader(paddle.io.Subset(dataset, range(16)), batch_size=8, shuffle=False,
                                      num_workers=num_workers)
        return [[t.numpy() for t in batch] for batch in loader]
    single, workers = batches(0), batches(2)
    for a, b in zip(single, workers):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert single[0][0].shape == (8, 3, 128, 96) and single[0][1].shape == (8, 17, 32, 24)
    assert single[0][3].tolist() == list(range(8))
    assert not np.array_equal(batches(0, epoch=1)[0][0], single[0][0])
    assert not np.array_equal(batches(0, seed=1)[0][0], single[0][0])


def test_distributed_batch_sampler_covers_dataset():
    dataset = data.COCOKeypointDataset(TINY_ANN, TINY_IMAGES, "256x192", train=False)
    sampler = paddle.io.DistributedBatchSampler(dataset, batch_size=4, num_replicas=2, rank=1)
    indices = [i for batch in sampler for i in batch]
    assert len(indices) == 6 and all(0 <= i < len(dataset) for i in indices)


def test_fourteen_keypoint_file(tmp_path):
    names = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
             "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck"]
    category = dict(id=1, name="person", keypoints=names, skeleton=[[13, 14], [14, 1], [14, 2], [1, 3], [3, 5]])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (200, 240, 3), dtype=np.uint8) for _ in range(3)]
    anns = [dict(image_id=i % 3 + 1, bbox=[40, 20, 120, 170], num_keypoints=14,
                 keypoints=np.column_stack([rng.uniform(40, 160, 14), rng.uniform(20, 190, 14),
                                            np.full(14, 2)]).ravel().tolist()) for i in range(6)]
    ann, image_dir = write_coco(str(tmp_path), images, anns, category, ext=".jpg")
    with pytest.warns(UserWarning, match="sigmas"):
        dataset = data.COCOKeypointDataset(ann, image_dir, "256x192", train=True)
    info = dataset.info
    assert info.num_joints == 14 and info.flip_pairs == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]
    assert info.skeleton[0] == [12, 13] and info.upper_body_ids == [0, 1, 2, 3, 4, 5, 12, 13]
    np.testing.assert_allclose(info.sigmas[:2], data.COCO_SIGMAS[5:7])
    sigmas_file = tmp_path / "sigmas.json"
    sigmas_file.write_text(json.dumps([0.05] * 14))
    assert data.keypoint_info_from_category(category, str(sigmas_file)).sigmas.tolist() == pytest.approx([0.05] * 14)
    [(image, target, weight, index)] = list(paddle.io.DataLoader(paddle.io.Subset(dataset, range(4)), batch_size=4))
    assert image.shape == [4, 3, 256, 192] and target.shape == [4, 14, 64, 48]
    assert weight.shape == [4, 14, 1] and index.shape == [4]


# ------------------------------------------------------------------------------------------------- bad input

def raises_one_line(error, match, function, *args, **kwargs):
    with pytest.raises(error, match=match) as caught:
        function(*args, **kwargs)
    assert "\n" not in str(caught.value)


def test_bad_inputs_give_one_line_errors(tmp_path):
    def dataset(ann=TINY_ANN, images=TINY_IMAGES, **kwargs):
        return data.COCOKeypointDataset(str(ann), str(images), "256x192", train=False, **kwargs)
    raises_one_line(FileNotFoundError, "nope.json", dataset, tmp_path / "nope.json")
    raises_one_line(FileNotFoundError, "no_images", dataset, images=tmp_path / "no_images")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    raises_one_line(ValueError, "broken.json.*not valid JSON", dataset, broken)
    coco = json.load(open(TINY_ANN))
    coco["annotations"][2]["keypoints"] = coco["annotations"][2]["keypoints"][:-3]
    short = tmp_path / "short.json"
    short.write_text(json.dumps(coco))
    raises_one_line(ValueError, r"short.json.*48 keypoint values, expected 3\*17", dataset, short)
    del coco["categories"][0]["keypoints"]
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps(coco))
    raises_one_line(ValueError, "instances.json.*keypoints", dataset, instances)
    empty = tmp_path / "empty_dets.json"
    empty.write_text("[]")
    raises_one_line(ValueError, "empty_dets.json", dataset, boxes=str(empty))
    other = tmp_path / "other_dets.json"
    other.write_text(json.dumps([dict(image_id=123456789, category_id=1, bbox=[1, 2, 30, 40], score=0.9)]))
    raises_one_line(ValueError, "other_dets.json.*not in the annotation file", dataset, boxes=str(other))
    no_score = tmp_path / "no_score.json"
    no_score.write_text(json.dumps([dict(image_id=785, category_id=1, bbox=[1, 2, 30, 40])]))
    raises_one_line(ValueError, "no_score.json.*malformed", dataset, boxes=str(no_score))
    raises_one_line(FileNotFoundError, "missing_dets.json", dataset, boxes=str(tmp_path / "missing_dets.json"))
    raises_one_line(FileNotFoundError, "--weights .*gone.pdparams", data.resolve_path_or_url,
                    str(tmp_path / "gone.pdparams"), what="--weights")
    raises_one_line(FileNotFoundError, "missing.jpg", data.read_image_rgb, str(tmp_path / "missing.jpg"))


def test_unreadable_or_missing_image_is_skipped_not_fatal(tmp_path):
    ann, image_dir = write_coco(str(tmp_path), [np.zeros((100, 100, 3), np.uint8)] * 2, [
        dict(image_id=i, bbox=[10, 10, 50, 80], num_keypoints=1, keypoints=[30, 40, 2] + [0] * 48) for i in (1, 2)])
    open(os.path.join(image_dir, "000000000001.png"), "wb").write(b"not an image")
    os.remove(os.path.join(image_dir, "000000000002.png"))
    dataset = data.COCOKeypointDataset(ann, image_dir, "256x192", train=True)
    for i in range(2):
        with pytest.warns(UserWarning, match=f"00000000000{i + 1}.png"):
            image, target, weight, index = dataset[i]
        assert index == -(i + 1) and index.dtype == np.int64
        assert image.shape == (3, 256, 192) and not image.any() and not target.any() and not weight.any()


# ------------------------------------------------------------------------------------------------- downloads

class FileServer(http.server.ThreadingHTTPServer):
    """Loopback server for files in memory, with Range support and an optional dropped first transfer."""

    def __init__(self, files, drop_first_after=None):
        super().__init__(("127.0.0.1", 0), FileHandler)
        self.files, self.drop_first_after, self.requests = files, drop_first_after, []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class FileHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if server.drop_first_after and len(server.requests) == 1:
            self.wfile.write(body[start:start + server.drop_first_after])
            self.close_connection = True  # the client sees the connection close mid-body
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


def tiny_zip():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("annotations/person_keypoints_val2017.json", json.dumps({"n": list(range(3000))}))
        archive.writestr("annotations/readme.txt", "hello")
    return buffer.getvalue()


def test_download_resumes_after_a_dropped_connection(tmp_path):
    body = tiny_zip()
    server = FileServer({"/a.zip": body}, drop_first_after=1000)
    dest = str(tmp_path / "a.zip")
    data.download_file(server.url + "/a.zip", dest, len(body), hashlib.md5(body).hexdigest())
    assert open(dest, "rb").read() == body and not os.path.exists(dest + ".part")
    assert server.requests == [("/a.zip", None), ("/a.zip", "bytes=1000-")]
    data.download_file(server.url + "/a.zip", dest, len(body))  # already there: no request
    assert len(server.requests) == 2
    server.shutdown()


def test_download_with_wrong_md5_is_deleted_with_a_clear_error(tmp_path):
    body = tiny_zip()
    server = FileServer({"/a.zip": body})
    dest = str(tmp_path / "a.zip")
    with pytest.raises(ValueError, match="a.zip: MD5 .* does not match"):
        data.download_file(server.url + "/a.zip", dest, len(body), "0" * 32)
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")
    with pytest.raises(ConnectionError, match="404"):
        data.download_file(server.url + "/missing.zip", dest)
    server.shutdown()


def test_download_coco_unpacks_once(tmp_path):
    body = tiny_zip()
    server = FileServer({"/annotations/annotations_trainval2017.zip": body})
    files = {"annotations": ("annotations/annotations_trainval2017.zip", len(body), hashlib.md5(body).hexdigest())}
    root = str(tmp_path / "coco")
    data.download_coco(root, ["annotations"], base_url=server.url, files=files)
    assert json.load(open(os.path.join(root, "annotations", "person_keypoints_val2017.json")))["n"][-1] == 2999
    assert not os.path.exists(os.path.join(root, "annotations_trainval2017.zip"))
    data.download_coco(root, ["annotations"], base_url=server.url, files=files)
    assert len(server.requests) == 1
    with pytest.raises(ValueError, match="--what"):
        data.download_coco(root, ["test"], base_url=server.url, files=files)
    server.shutdown()


def test_resolve_url_downloads_once_into_cache(tmp_path):
    server = FileServer({"/w/model.pdparams": b"weights" * 100})
    first = data.resolve_path_or_url(server.url + "/w/model.pdparams", cache_dir=str(tmp_path))
    second = data.resolve_path_or_url(server.url + "/w/model.pdparams", cache_dir=str(tmp_path))
    assert first == second and first.endswith("model.pdparams") and open(first, "rb").read() == b"weights" * 100
    assert len(server.requests) == 1 and data.resolve_path_or_url(first) == first
    server.shutdown()


# ====================================================================================================
# train.py and distill.py

import train as T  # noqa: E402  (sections of this file follow the scripts)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic COCO-format dataset shared by the training, evaluation and prediction tests."""
    from data import make_synthetic_dataset
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(str(root), num_train=24, num_val=8, seed=0, image_size=(160, 128), workers=1)
    return str(root)


def tiny_run_args(data, out, *extra):
    return T.apply_recipe(T.build_parser().parse_args([
        "--data", data, "--out", str(out), "--model", "lite_hrnet_18", "--input-size", "64x64",
        "--batch-size", "8", "--lr", "5e-3", "--warmup-steps", "0", "--workers", "0", "--eval-every", "100",
        "--no-flip", "--device", "cpu", *extra]))


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_loss_matches_hrnet_joints_mse_formula():
    rng = np.random.RandomState(0)
    pred, gt = rng.rand(2, 3, 4, 5).astype("float32"), rng.rand(2, 3, 4, 5).astype("float32")
    w = np.array([[[1], [0], [1]], [[1], [1], [0]]], np.float32)
    expected = np.mean([0.5 * np.mean((pred[:, k] * w[:, k, :, None] - gt[:, k] * w[:, k, :, None]) ** 2)
                        for k in range(3)])  # HRNet: per joint 0.5 * MSE over (N, H, W), averaged over joints
    got = T.joints_mse_loss(paddle.to_tensor(pred), paddle.to_tensor(gt), paddle.to_tensor(w), 0.5)
    assert abs(float(got) - expected) < 1e-7
    per_sample_joint = 0.5 * ((pred - gt) ** 2 * w[..., None]).mean(axis=(2, 3))
    ohkm = np.sort(per_sample_joint, axis=1)[:, -2:].mean()
    assert abs(float(T.joints_mse_loss(paddle.to_tensor(pred), paddle.to_tensor(gt), paddle.to_tensor(w), 0.5,
                                       ohkm_topk=2)) - ohkm) < 1e-7


def test_learning_rate_warmup_and_steps():
    args = T.build_parser().parse_args(["--lr", "2e-3", "--warmup-steps", "500", "--milestones", "170", "200"])
    assert T.learning_rate(args, 0, 0) == pytest.approx(2e-6)
    assert T.learning_rate(args, 0, 250) == pytest.approx(2e-3 * (0.001 + 0.999 * 0.5))
    assert T.learning_rate(args, 5, 600) == pytest.approx(2e-3)
    assert T.learning_rate(args, 170, 10 ** 6) == pytest.approx(2e-4)
    assert T.learning_rate(args, 205, 10 ** 6) == pytest.approx(2e-5)
    within_epoch = T.build_parser().parse_args(["--lr", "4e-3", "--warmup-steps", "0", "--milestones", "0.75"])
    assert T.learning_rate(within_epoch, 0.74, 100) == pytest.approx(4e-3)
    assert T.learning_rate(within_epoch, 0.75, 104) == pytest.approx(4e-4)


def test_short_training_lowers_the_loss_and_resume_is_exact(synthetic_root, tmp_path):
    straight = tmp_path / "straight"
    T.train(tiny_run_args(synthetic_root, straight, "--epochs", "4"))
    losses = [r["loss"] for r in read_metrics(straight)]
    assert losses[-1] < 0.8 * losses[0]
    assert "AP" in read_metrics(straight)[-1] and (straight / "best.pdparams").exists()
    picture = cv2.imread(str(straight / "predictions.jpg"))  # the 8 val images (160x128) drawn, 4 per row
    assert picture.shape == (2 * 128, 4 * 160, 3)

    interrupted = tmp_path / "interrupted"
    T.train(tiny_run_args(synthetic_root, interrupted, "--epochs", "2"))
    T.train(tiny_run_args(synthetic_root, interrupted, "--epochs", "4",
                          "--resume", str(interrupted / "last.pdparams")))
    resumed = [r["loss"] for r in read_metrics(interrupted)]
    assert len(resumed) == 4
    np.testing.assert_allclose(resumed, losses, rtol=1e-5)  # same data order, same optimizer state


def test_data_show_draws_a_grid_of_crops_with_their_target_skeletons(synthetic_root, tmp_path, capsys):
    out = tmp_path / "crops.jpg"
    data.main(["show", "--data", synthetic_root, "--out", str(out), "--n", "6", "--input-size", "128x96"])
    assert "wrote " + str(out) in capsys.readouterr().out
    grid = cv2.imread(str(out))
    assert grid.shape == (2 * 128, 4 * 96, 3)  # 6 crops, 4 per row, the last row padded
    assert grid[136:248, 200:376].max() < 16  # padding tiles are black (away from JPEG ringing at their edge)
    orange = (grid[..., 2] > 200) & (grid[..., 1] > 90) & (grid[..., 1] < 170) & (grid[..., 0] < 60)
    assert orange.sum() > 20  # left joints and limbs drawn in data.draw_poses' orange


def test_amp_levels_parse_and_are_ignored_on_cpu_with_a_note(synthetic_root, tmp_path, capsys):
    parse = T.build_parser().parse_args
    assert parse([]).amp is None and parse(["--amp"]).amp == "O1" and parse(["--amp", "O2"]).amp == "O2"
    with pytest.raises(SystemExit):
        parse(["--amp", "O3"])
    T.train(tiny_run_args(synthetic_root, tmp_path / "amp", "--epochs", "1", "--amp", "O2"))
    T.train(tiny_run_args(synthetic_root, tmp_path / "plain", "--epochs", "1"))
    assert "--amp O2: ignored on CPU" in capsys.readouterr().out
    assert read_metrics(tmp_path / "amp")[0]["loss"] == read_metrics(tmp_path / "plain")[0]["loss"]


def test_nan_loss_stops_with_the_step_named_and_keeps_the_checkpoint(synthetic_root, tmp_path):
    T.train(tiny_run_args(synthetic_root, tmp_path, "--epochs", "1"))
    good, steps = (tmp_path / "last.pdparams").read_bytes(), read_metrics(tmp_path)[0]["step"]
    with pytest.raises(SystemExit, match=rf"loss became nan at step {steps} \(epoch 2, batch 0\)"):
        T.train(tiny_run_args(synthetic_root, tmp_path, "--epochs", "2", "--loss-scale", "nan",
                              "--resume", str(tmp_path / "last.pdparams")))
    assert (tmp_path / "last.pdparams").read_bytes() == good


@pytest.mark.xdist_group("launch")
def test_two_process_cpu_launch_keeps_replicas_identical(synthetic_root, tmp_path):
    r = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                        "--log_dir", str(tmp_path / "log"), "train.py", "--data", synthetic_root,
                        "--out", str(tmp_path / "run"), "--model", "lite_hrnet_18", "--input-size", "64x64",
                        "--batch-size", "4", "--epochs", "1", "--workers", "0", "--no-flip", "--device", "cpu"],
                       cwd=HERE, capture_output=True, text=True, timeout=900)
    logs = [(tmp_path / "log" / f"workerlog.{rank}").read_text() for rank in (0, 1)]
    assert r.returncode == 0, logs[0][-2000:] + logs[1][-2000:]
    sums = [[line.split()[-1] for line in log.splitlines() if "parameter checksum" in line] for log in logs]
    assert len(sums[0]) == 1 and sums[0] == sums[1]
    assert "2 process(es) x batch 4" in logs[0]


def test_distillation_loss_is_zero_for_the_teacher_and_only_trains_the_student(tmp_path):
    import distill
    paddle.seed(0)
    M.save_checkpoint(M.build_model("lite_hrnet_18").state_dict(), str(tmp_path / "teacher.pdparams"))
    path = str(tmp_path / "teacher.pdparams")
    teacher = distill.build_teacher(path, *M.read_checkpoint(path), "lite_hrnet_18", None, "eval")
    assert not teacher.training and all(p.stop_gradient for p in teacher.parameters())
    assert distill.build_teacher(path, *M.read_checkpoint(path), "lite_hrnet_18", None, "train").training
    student = M.build_model("lite_hrnet_18")
    x, w = paddle.randn([2, 3, 64, 64]), paddle.ones([2, 17, 1])
    same = student(x)
    assert float(distill.distillation_loss(same, same.detach(), w)) == 0.0
    args = T.build_parser().parse_args(["--loss-scale", "0.5"])
    args.distill_weight, args.distill_scale = 1.0, 0.5
    loss = distill.distill_loss_fn(args, teacher)(student(x), x, paddle.zeros([2, 17, 16, 16]), w)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.parameters())


def test_one_cpu_thread_trains_like_two(synthetic_root):
    """The fast CPU setting (--threads 1) must not change the numbers: the same Adam steps from the same weights
    give the loss curve of Paddle's two-thread kernels, within float32 rounding."""
    args = tiny_run_args(synthetic_root, "unused")
    train_set, _ = T.build_datasets(args)
    batch = [paddle.to_tensor(np.stack(column)) for column in zip(*(train_set[i][:3] for i in range(4)))]
    paddle.seed(0)
    start = M.build_model("lite_hrnet_18").state_dict()
    curves = []
    for threads in (2, 1):
        model = M.build_model("lite_hrnet_18")
        model.set_state_dict(start)
        # a small lr: Adam's first steps turn rounding-level gradients into lr-sized updates
        optimizer = paddle.optimizer.Adam(learning_rate=1e-4, parameters=model.parameters())
        T.use_cpu_threads(threads)
        curves.append([T.training_step(model, optimizer, T.heatmap_loss(args), *batch) for _ in range(4)])
    T.use_cpu_threads(1)
    assert curves[0][-1] < 0.98 * curves[0][0]  # the steps do train
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-4)


def test_benchmark_reports_step_and_loading_rates(synthetic_root, capsys):
    T.main(["--benchmark", "1", "--data", synthetic_root, "--model", "lite_hrnet_18", "--input-size", "64x64",
            "--batch-size", "2", "--workers", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "benchmark: lite_hrnet_18 64x64, batch 2, cpu, median of 1 steps after 3 warm-up" in out
    steps = [line for line in out.splitlines() if line.startswith("training step")]
    assert len(steps) == len({1, os.cpu_count()}) + 1 and "1 thread(s) (--threads)" in steps[0]
    assert "1 thread(s), Paddle's depthwise op on every map" in steps[-1]  # Lite-HRNet: DepthwiseConv2D's two forms
    assert M.DepthwiseConv2D.matmul_positions == 256  # as before the benchmark
    for line in steps + [line for line in out.splitlines() if line.startswith("data loading (0 workers)")]:
        assert float(line.split(": ")[1].split(" samples/s")[0]) > 0


@pytest.mark.parametrize("flag", [["--threads", "0"], ["--benchmark", "-1"]])
def test_bad_speed_flags_are_one_line_errors(flag):
    with pytest.raises(SystemExit, match=rf"^error: {flag[0]} {flag[1]}: expected"):
        T.main(flag + ["--device", "cpu"])


# ====================================================================================================
# evaluate.py: decoding, flip test, OKS / OKS-NMS, rescoring, COCO scoring, the CLI, end to end

import evaluate as ev  # noqa: E402
from data import COCO_SIGMAS  # noqa: E402

TINY = os.path.join(ASSETS, "coco_tiny")
TINY_PREDICTIONS = os.path.join(TINY, "results", "keypoint_predictions.json")
COCO_FLIP_PAIRS = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]


def gaussian_map(h, w, x0, y0, sigma=2.0):
    """An unnormalised Gaussian (peak 1 at the sub-pixel point x0, y0) on an h x w grid."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def random_peaks(rng, n, h=64, w=48, margin=5):
    return rng.uniform(margin, w - 1 - margin, n), rng.uniform(margin, h - 1 - margin, n)


# ----------------------------------------------------------------------------- decoding


def test_get_max_preds_on_hand_made_maps():
    hm = np.zeros((1, 3, 4, 5), np.float32)
    hm[0, 0, 2, 3] = 0.7                       # plain peak at x=3, y=2
    hm[0, 1] = -1.0
    hm[0, 1, 1, 4] = -0.5                      # peak <= 0: coords zeroed, maxval kept
    hm[0, 2, 3, 1] = hm[0, 2, 0, 4] = 0.9      # tie: the first in row-major order (y=0, x=4) wins
    coords, maxvals = ev.get_max_preds(hm)
    assert coords.dtype == np.float32 and coords.shape == (1, 3, 2) and maxvals.shape == (1, 3, 1)
    np.testing.assert_array_equal(coords[0], [[3, 2], [0, 0], [4, 0]])
    np.testing.assert_allclose(maxvals[0, :, 0], [0.7, -0.5, 0.9])
    with pytest.raises(ValueError):
        ev.get_max_preds(hm[0])


def test_quarter_offset_recovers_subpixel_peaks_within_a_quarter_pixel():
    rng = np.random.default_rng(0)
    xs, ys = random_peaks(rng, 200)
    hm = np.stack([gaussian_map(64, 48, x, y) for x, y in zip(xs, ys)])[None]
    coords, _ = ev.get_max_preds(hm)
    refined = ev.quarter_offset(hm, coords)
    true = np.stack([xs, ys], axis=1)
    assert np.abs(refined[0] - true).max() <= 0.25 + 1e-5
    # the 0.25 step goes from the integer peak toward the true position
    moved = refined[0] - coords[0]
    np.testing.assert_array_equal(np.abs(moved), 0.25)
    np.testing.assert_array_equal(np.sign(moved), np.sign(true - coords[0]))


@pytest.mark.parametrize("kernel", [3, 11])
def test_dark_recovers_subpixel_peaks(kernel):
    rng = np.random.default_rng(1)
    xs, ys = random_peaks(rng, 200, margin=8)
    hm = np.stack([gaussian_map(64, 48, x, y) for x, y in zip(xs, ys)])[None]
    coords, _ = ev.get_max_preds(hm)
    refined = ev.dark_refine(hm, coords, kernel)
    assert np.abs(refined[0] - np.stack([xs, ys], axis=1)).max() < 0.1


def official_style_quarter_offset(heatmaps, coords):
    """The official per-joint loop, written out literally, as an independent reference."""
    coords = coords.copy()
    h, w = heatmaps.shape[2:]
    for n in range(coords.shape[0]):
        for p in range(coords.shape[1]):
            hm = heatmaps[n][p]
            px, py = int(np.floor(coords[n][p][0] + 0.5)), int(np.floor(coords[n][p][1] + 0.5))
            if 1 < px < w - 1 and 1 < py < h - 1:
                diff = np.array([hm[py][px + 1] - hm[py][px - 1], hm[py + 1][px] - hm[py - 1][px]])
                coords[n][p] += np.sign(diff) * .25
    return coords


def official_style_dark(heatmaps, coords, kernel):
    """DARK as PaddleDetection writes it (per-map blur, explicit Hessian inverse), on copies."""
    heatmaps, coords = heatmaps.copy(), coords.copy()
    border = (kernel - 1) // 2
    h, w = heatmaps.shape[2:]
    for i in range(heatmaps.shape[0]):
        for j in range(heatmaps.shape[1]):
            origin_max = np.max(heatmaps[i, j])
            padded = np.zeros((h + 2 * border, w + 2 * border))
            padded[border:-border, border:-border] = heatmaps[i, j]
            heatmaps[i, j] = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:-border, border:-border]
            heatmaps[i, j] *= origin_max / np.max(heatmaps[i, j])
    logs = np.log(np.maximum(heatmaps, 1e-10))
    for n in range(coords.shape[0]):
        for p in range(coords.shape[1]):
            hm, px, py = logs[n][p], int(coords[n, p, 0]), int(coords[n, p, 1])
            if 1 < px < w - 2 and 1 < py < h - 2:
                grad = np.array([0.5 * (hm[py][px + 1] - hm[py][px - 1]), 0.5 * (hm[py + 1][px] - hm[py - 1][px])])
                dxx = 0.25 * (hm[py][px + 2] - 2 * hm[py][px] + hm[py][px - 2])
                dyy = 0.25 * (hm[py + 2][px] - 2 * hm[py][px] + hm[py - 2][px])
                dxy = 0.25 * (hm[py + 1][px + 1] - hm[py - 1][px + 1] - hm[py + 1][px - 1] + hm[py - 1][px - 1])
                if dxx * dyy - dxy ** 2 != 0:
                    coords[n, p] -= np.linalg.inv(np.array([[dxx, dxy], [dxy, dyy]], np.float64)) @ grad
    return coords


def network_like_heatmaps(rng, n=4, k=17, h=64, w=48):
    """Gaussian blobs of random height/position (some on the border) plus noise, some maps all negative."""
    maps = np.zeros((n, k, h, w), np.float32)
    for i in range(n):
        for j in range(k):
            x, y = rng.uniform(-1, w), rng.uniform(-1, h)
            maps[i, j] = rng.uniform(0.2, 1) * gaussian_map(h, w, x, y, rng.uniform(1.5, 3))
    maps += rng.normal(0, 0.01, maps.shape).astype(np.float32)
    maps[0, :3] -= 2  # peak <= 0: coords zeroed, no refinement
    return maps


def test_decoders_match_the_official_loops():
    maps = network_like_heatmaps(np.random.default_rng(2))
    coords, _ = ev.get_max_preds(maps)
    np.testing.assert_array_equal(ev.quarter_offset(maps, coords), official_style_quarter_offset(maps, coords))
    for kernel in (3, 11):
        np.testing.assert_allclose(ev.dark_refine(maps, coords, kernel), official_style_dark(maps, coords, kernel),
                                   atol=1e-4)


def test_dark_leaves_inputs_untouched_and_checks_kernel():
    maps = network_like_heatmaps(np.random.default_rng(3), n=1)
    coords, _ = ev.get_max_preds(maps)
    maps_before, coords_before = maps.copy(), coords.copy()
    ev.dark_refine(maps, coords, 3)
    ev.quarter_offset(maps, coords)
    np.testing.assert_array_equal(maps, maps_before)
    np.testing.assert_array_equal(coords, coords_before)
    with pytest.raises(ValueError, match="odd"):
        ev.dark_refine(maps, coords, 4)


@pytest.mark.parametrize("decode", ["default", "dark"])
def test_heatmaps_to_keypoints_maps_heatmap_pixels_to_the_image(decode):
    # a 48x64 heatmap of a box with center (24, 32) and scale (0.24, 0.32) (48x64 px) is the identity map;
    # a box twice as large centred at (300, 200) maps heatmap (x, y) to (300, 200) + 2 * ((x, y) - (24, 32))
    rng = np.random.default_rng(4)
    xs, ys = random_peaks(rng, 17, margin=8)
    hm = np.stack([gaussian_map(64, 48, x, y) for x, y in zip(xs, ys)])
    heatmaps = np.stack([hm, hm])
    centers = np.array([[24, 32], [300, 200]], np.float32)
    scales = np.array([[0.24, 0.32], [0.48, 0.64]], np.float32)
    preds, maxvals = ev.heatmaps_to_keypoints(heatmaps, centers, scales, decode=decode)
    assert preds.shape == (2, 17, 2) and preds.dtype == np.float32 and maxvals.shape == (2, 17, 1)
    on_heatmap = preds[0]
    np.testing.assert_allclose(preds[1], [300, 200] + 2 * (on_heatmap - [24, 32]), atol=1e-3)
    tolerance = 0.25 + 1e-3 if decode == "default" else 0.1
    assert np.abs(on_heatmap - np.stack([xs, ys], axis=1)).max() <= tolerance
    with pytest.raises(ValueError, match="decode"):
        ev.heatmaps_to_keypoints(heatmaps, centers, scales, decode="argmax")


# ----------------------------------------------------------------------------- flip test


def test_flip_back_and_merge_flip_on_hand_made_numbers():
    flipped = np.arange(2 * 3 * 2 * 3, dtype=np.float32).reshape(2, 3, 2, 3)
    back = ev.flip_back(flipped, [[1, 2]])
    np.testing.assert_array_equal(back[:, 0], flipped[:, 0, :, ::-1])
    np.testing.assert_array_equal(back[:, 1], flipped[:, 2, :, ::-1])
    np.testing.assert_array_equal(back[:, 2], flipped[:, 1, :, ::-1])
    # merge: shift the flipped-back map one column right (column 0 keeps its value), then average
    heatmaps = np.ones((1, 1, 2, 3), np.float32)
    # flip_back -> [[3,2,1],[6,5,4]] -> shift -> [[3,3,2],[6,6,5]]
    flipped = np.array([[[[1, 2, 3], [4, 5, 6]]]], np.float32)
    np.testing.assert_array_equal(ev.merge_flip(heatmaps, flipped, []), [[[[2, 2, 1.5], [3.5, 3.5, 3]]]])
    np.testing.assert_array_equal(ev.merge_flip(heatmaps, flipped, [], shift=False), [[[[2, 1.5, 1], [3.5, 3, 2.5]]]])


class FlipEquivariantNet(paddle.nn.Layer):
    """Heatmaps with f(mirror(x)) == flip_back(f(x)) built from an arbitrary (asymmetric) conv h:
    for a pair (l, r) channel l = h_l(x) and channel r = mirror(h_l(mirror(x))); unpaired channels
    average h_j(x) and mirror(h_j(mirror(x)))."""

    def __init__(self, num_joints, flip_pairs):
        super().__init__()
        self.pool = paddle.nn.AvgPool2D(4)
        self.conv = paddle.nn.Conv2D(3, num_joints, 3, padding=1)
        self.flip_pairs = flip_pairs
        self.num_joints = num_joints

    def forward(self, x):
        mirrored = paddle.flip(x, axis=[3])
        h, h_of_mirror = self.conv(self.pool(x)), self.conv(self.pool(mirrored))
        channels = [None] * self.num_joints
        paired = {j for pair in self.flip_pairs for j in pair}
        for left, right in self.flip_pairs:
            channels[left] = h[:, left]
            channels[right] = paddle.flip(h_of_mirror[:, left], axis=[2])
        for j in set(range(self.num_joints)) - paired:  # unpaired joints: average of both, mirror-symmetric in x
            channels[j] = 0.5 * (h[:, j] + paddle.flip(h_of_mirror[:, j], axis=[2]))
        return paddle.stack(channels, axis=1)


def test_flip_test_of_a_flip_equivariant_model():
    paddle.seed(0)
    net = FlipEquivariantNet(17, COCO_FLIP_PAIRS)
    images = paddle.to_tensor(np.random.default_rng(5).normal(size=(2, 3, 64, 48)).astype(np.float32))
    plain = net(images).numpy()
    of_mirror = net(paddle.flip(images, axis=[3])).numpy()
    # equivariance: the flip test without the shift gives back the plain heatmaps
    np.testing.assert_allclose(ev.merge_flip(plain, of_mirror, COCO_FLIP_PAIRS, shift=False), plain, atol=1e-5)
    # a left/right symmetric image: the mirrored input is the same image, the same heatmaps come back
    symmetric = paddle.concat([images[:, :, :, :24], paddle.flip(images[:, :, :, :24], axis=[3])], axis=3)
    out = net(symmetric).numpy()
    np.testing.assert_allclose(ev.merge_flip(out, net(paddle.flip(symmetric, axis=[3])).numpy(), COCO_FLIP_PAIRS,
                                             shift=False), out, atol=1e-5)
    # through predict_heatmaps (official shift on): 0.5 * (plain + plain shifted right by one column)
    shifted = plain.copy()
    shifted[..., 1:] = plain[..., :-1]
    indices = paddle.to_tensor(np.array([0, -2], np.int64))  # the second image "could not be read"
    net.train()
    batches = list(ev.predict_heatmaps(net, [(images, None, None, indices)], flip=True, flip_pairs=COCO_FLIP_PAIRS))
    assert net.training  # mode restored
    (heatmaps, kept, skipped), = batches
    assert skipped.tolist() == [1] and kept.tolist() == [0]
    np.testing.assert_allclose(heatmaps, 0.5 * (plain + shifted)[:1], atol=1e-5)
    (no_flip, _, _), = ev.predict_heatmaps(net, [(images, None, None, indices)], flip=False)
    np.testing.assert_allclose(no_flip, plain[:1], atol=1e-6)
    with pytest.raises(ValueError, match="flip_pairs"):
        list(ev.predict_heatmaps(net, [(images, None, None, indices)], flip=True))


# ----------------------------------------------------------------------------- OKS, NMS, rescoring


def direct_oks(g, d, area_g, area_d, sigmas, thr=None):
    """OKS straight from the formula, one joint at a time."""
    total, count = 0.0, 0
    for k in range(len(sigmas)):
        if thr is not None and not (g[k, 2] > thr and d[k, 2] > thr):
            continue
        dist2 = (g[k, 0] - d[k, 0]) ** 2 + (g[k, 1] - d[k, 1]) ** 2
        total += np.exp(-dist2 / (2 * float(sigmas[k])) ** 2 / ((area_g + area_d) / 2 + np.spacing(1)) / 2)
        count += 1
    return total / count if count else 0.0


def random_pose(rng, center=(100, 100), spread=40):
    xy = rng.normal(center, spread, size=(17, 2))
    return np.concatenate([xy, rng.uniform(0, 1, (17, 1))], axis=1)


def test_oks_iou_matches_the_formula():
    rng = np.random.default_rng(6)
    g = random_pose(rng)
    ds = np.stack([g + np.concatenate([rng.normal(0, s, (17, 2)), np.zeros((17, 1))], 1) for s in (0, 2, 10, 50)])
    ds[:, :, 2] = rng.uniform(0, 1, (4, 17))
    areas = np.array([5000.0, 8000.0, 12000.0, 3000.0])
    for thr in (None, 0.2, 0.99):
        got = ev.oks_iou(g, ds, 6000.0, areas, COCO_SIGMAS, thr)
        want = [direct_oks(g, d, 6000.0, a, COCO_SIGMAS, thr) for d, a in zip(ds, areas)]
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert ev.oks_iou(g, ds, 6000.0, areas, COCO_SIGMAS)[0] == pytest.approx(1.0)
    np.testing.assert_array_equal(ev.oks_iou(g, ds, 6000.0, areas, COCO_SIGMAS, in_vis_thre=1.0), 0.0)  # no joint kept
    flat = ev.oks_iou(g.reshape(-1), ds.reshape(4, -1), 6000.0, areas, COCO_SIGMAS)  # official flat layout
    np.testing.assert_allclose(flat, ev.oks_iou(g, ds, 6000.0, areas, COCO_SIGMAS))


def test_oks_nms_keeps_the_better_of_two_duplicates_and_the_distinct_pose():
    rng = np.random.default_rng(7)
    pose = random_pose(rng)
    near_copy = pose + [0.5, -0.5, 0]
    distinct = random_pose(rng, center=(400, 300))
    people = [{"keypoints": near_copy, "score": 0.6, "area": 9000.0},
              {"keypoints": distinct, "score": 0.5, "area": 9000.0},
              {"keypoints": pose, "score": 0.9, "area": 9000.0}]
    assert ev.oks_nms(people, 0.9, COCO_SIGMAS) == [2, 1]
    assert ev.oks_nms([], 0.9, COCO_SIGMAS) == []
    # soft NMS keeps all three but pushes the duplicate behind the distinct pose
    assert ev.soft_oks_nms(people, 0.9, COCO_SIGMAS) == [2, 1, 0]


def test_soft_oks_nms_keeps_at_most_20():
    rng = np.random.default_rng(8)
    people = [{"keypoints": random_pose(rng, center=(100 * i, 0)), "score": float(s), "area": 1000.0}
              for i, s in enumerate(rng.uniform(0, 1, 30))]
    keep = ev.soft_oks_nms(people, 0.9, COCO_SIGMAS)
    scores = np.array([p["score"] for p in people])
    assert keep == list(np.argsort(-scores)[:20])  # far apart: no rescoring, just the 20 best


def test_rescore_and_nms_builds_official_results():
    rng = np.random.default_rng(9)
    pose = random_pose(rng)
    pose[:, 2] = 0.1
    pose[:4, 2] = [0.9, 0.5, 0.3, 0.2]  # above 0.2: 0.9, 0.5, 0.3 -> mean 0.5667 (0.2 is not > 0.2)
    people = [
        {"image_id": 7, "keypoints": pose, "center": np.float32([100, 100]), "scale": np.float32([1.0, 1.5]),
         "score": 0.8},
        {"image_id": 7, "keypoints": pose + [1, 0, 0], "center": [101, 100], "scale": [1.0, 1.5], "score": 0.5},
        {"image_id": 3, "keypoints": np.concatenate([pose[:, :2], np.full((17, 1), 0.1)], 1),
         "center": [5, 5], "scale": [1, 1], "score": 1.0},
    ]
    results = ev.rescore_and_nms(people, COCO_SIGMAS, in_vis_thre=0.2, oks_thre=0.9)
    assert [r["image_id"] for r in results] == [7, 3]  # the duplicate of image 7 is suppressed
    first = results[0]
    assert first["score"] == pytest.approx(0.8 * (0.9 + 0.5 + 0.3) / 3, rel=1e-6)
    assert results[1]["score"] == 0.0  # no joint above in_vis_thre
    assert first["category_id"] == 1 and len(first["keypoints"]) == 51
    assert all(type(v) is float for v in first["keypoints"] + first["center"] + first["scale"] + [first["score"]])
    np.testing.assert_allclose(first["keypoints"], pose.astype(np.float32).reshape(-1))
    json.dumps(results)  # plain python types only


# ----------------------------------------------------------------------------- COCO scoring and the CLI


def gt_as_results(ann_file):
    with open(ann_file) as f:
        annotations = json.load(f)["annotations"]
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
            for a in annotations if a["num_keypoints"] > 0 and not a["iscrowd"]]


def test_ground_truth_as_predictions_scores_ap_1():
    stats = ev.coco_keypoint_stats(TINY_ANN, gt_as_results(TINY_ANN))
    assert tuple(stats) == ev.STAT_NAMES
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)


def test_known_predictions_score_the_published_figures():
    with open(TINY_PREDICTIONS) as f:
        results = json.load(f)
    stats = ev.coco_keypoint_stats(TINY_ANN, results, sigmas=COCO_SIGMAS.astype(np.float32))
    assert round(stats["AP"], 4) == 0.8609 and round(stats["AP .5"], 4) == 0.9931 and round(stats["AR"], 3) == 0.875
    assert "bbox" not in results[0]  # the caller's dicts are not modified by pycocotools


def test_scoring_rejects_empty_results_and_foreign_image_ids():
    with pytest.raises(ValueError, match="no keypoint results"):
        ev.coco_keypoint_stats(TINY_ANN, [])
    foreign = gt_as_results(TINY_ANN)
    foreign[0] = dict(foreign[0], image_id=123456789)
    with pytest.raises(ValueError, match="123456789.*person_keypoints_val2017.json"):
        ev.coco_keypoint_stats(TINY_ANN, foreign)
    short = [dict(gt_as_results(TINY_ANN)[0], keypoints=[1.0] * 50)]
    with pytest.raises(ValueError, match="51 keypoint values"):
        ev.coco_keypoint_stats(TINY_ANN, short)
    with pytest.raises(ValueError, match="not found"):
        ev.coco_keypoint_stats("/nonexistent/ann.json", gt_as_results(TINY_ANN))


def test_cli_scores_a_results_file(capsys):
    ev.main(["--data", TINY, "--results", TINY_PREDICTIONS])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "AP: 0.861"
    assert len(lines) >= 11 and lines[-20].startswith("AR (L)")  # then the per-joint table: a header, 17 rows


def cli_error(argv, main=None):
    """The one-line error a script's main (default evaluate.py's) exits with on argv."""
    with pytest.raises(SystemExit) as info:
        (main or ev.main)(argv)
    message = str(info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_cli_reports_bad_input_in_one_line(tmp_path, lite18_weights):
    assert "annotation file" in cli_error(["--data", str(tmp_path), "--results", TINY_PREDICTIONS])
    assert "--results" in cli_error(["--data", TINY, "--results", str(tmp_path / "missing.json")])
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert "no keypoint results" in cli_error(["--data", TINY, "--results", str(empty)])
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    assert "not valid JSON" in cli_error(["--data", TINY, "--results", str(broken)])
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps([dict(gt_as_results(TINY_ANN)[0], image_id=42)]))
    assert "not in" in cli_error(["--data", TINY, "--results", str(foreign)])
    assert "--weights or --model-dir is needed" in cli_error(["--data", TINY])
    model_args = ["--data", TINY, "--model", "lite_hrnet_18", "--weights", lite18_weights]
    assert "--boxes" in cli_error(model_args + ["--boxes", str(tmp_path / "nope.json")])
    assert "non-empty" in cli_error(model_args + ["--boxes", str(empty)])
    other_images = tmp_path / "other_images.json"
    other_images.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 50, 80], "score": 0.9}]))
    assert "not in the annotation file" in cli_error(model_args + ["--boxes", str(other_images)])
    assert "--input-size" in cli_error(model_args + ["--input-size", "250x192"])


def test_write_json_atomically(tmp_path):
    path = tmp_path / "sub" / "results.json"
    data.write_json_atomically([{"a": 1.5}], str(path))
    assert json.loads(path.read_text()) == [{"a": 1.5}]
    assert os.listdir(path.parent) == ["results.json"]


# ----------------------------------------------------------------------------- end to end with data.py / model.py


def tiny_dataset(boxes="gt", **kwargs):
    from data import COCOKeypointDataset, parse_input_size
    return COCOKeypointDataset(TINY_ANN, os.path.join(TINY, "val2017"), parse_input_size("256x192"), train=False,
                               boxes=boxes, **kwargs)


class TargetsAsImages(paddle.io.Dataset):
    """The dataset's own target heatmaps in place of the images: with an identity 'model' the evaluation
    must find the ground-truth poses again (checks crop transform, target rendering and decoding agree)."""

    def __init__(self, dataset):
        self.dataset, self.info, self.ann_file = dataset, dataset.info, dataset.ann_file
        self.record, self.image_ids = dataset.record, dataset.image_ids
        self.udp = dataset.udp

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        _image, target, target_weight, index = self.dataset[i]
        return target, target, target_weight, index


class Identity(paddle.nn.Layer):
    def forward(self, x):
        return x


@pytest.mark.parametrize("decode, udp", [("default", False), ("dark", False), ("default", True)])
def test_evaluate_model_finds_the_ground_truth_from_perfect_heatmaps(decode, udp):
    dataset = TargetsAsImages(tiny_dataset(udp=udp))
    logs = []
    results, stats = ev.evaluate_model(Identity(), dataset, batch_size=8, flip=False, decode=decode, log=logs.append)
    assert len(results) == len(dataset) == 12
    assert stats["AP"] > 0.95, stats
    assert any("samples/s" in line for line in logs)


def test_evaluate_model_scores_only_the_images_it_could_read(tmp_path):
    os.symlink(os.path.join(TINY, "val2017", "000000000785.jpg"), tmp_path / "000000000785.jpg")
    from data import COCOKeypointDataset
    dataset = TargetsAsImages(COCOKeypointDataset(TINY_ANN, str(tmp_path), "256x192", train=False))
    logs = []
    with pytest.warns(UserWarning):
        results, stats = ev.evaluate_model(Identity(), dataset, batch_size=4, flip=False, log=logs.append)
    assert {r["image_id"] for r in results} == {785}
    assert any("skipped 11 of 12 samples: 3 images could not be read" in line for line in logs)
    assert stats["AP"] > 0.95  # the people of the three unread images are not counted as missed


def test_evaluate_model_with_a_random_lite_hrnet_on_gt_and_detector_boxes(tmp_path):
    from model import build_model
    paddle.seed(0)
    model = build_model("lite_hrnet_18")
    model.train()
    for boxes, kwargs in (("gt", {}), (TINY_DETS, {"det_score_thr": 0.5})):
        dataset = tiny_dataset(boxes, **kwargs)
        results, stats = ev.evaluate_model(model, dataset, batch_size=16, flip=boxes == "gt", log=lambda *a: None)
        assert model.training  # train.py's periodic eval gets its training mode back
        assert tuple(stats) == ev.STAT_NAMES and all(isinstance(v, float) and -1 <= v <= 1 for v in stats.values())
        assert 0 < len(results) <= len(dataset)
        assert {r["image_id"] for r in results} <= {785, 40083, 196141, 197388}
        for r in results[:3]:
            assert r["category_id"] == 1 and len(r["keypoints"]) == 51 and np.isfinite(r["keypoints"]).all()
            assert 0 <= r["score"] <= 1 and len(r["center"]) == len(r["scale"]) == 2


@pytest.fixture(scope="module")
def lite18_weights(tmp_path_factory):
    """A random lite_hrnet_18 with settled BatchNorm statistics, saved as a checkpoint (evaluate, export,
    predict and quantize tests)."""
    paddle.seed(1)
    model = settle_batch_norm(M.build_model("lite_hrnet_18"), (2, 3, 128, 96))
    path = tmp_path_factory.mktemp("weights") / "lite18.pdparams"
    paddle.save(model.state_dict(), str(path))
    return str(path)


def test_cli_evaluates_a_model_and_writes_results(lite18_weights, tmp_path, capsys):
    out = tmp_path / "results.json"
    ev.main(["--data", TINY, "--model", "lite_hrnet_18", "--weights", lite18_weights, "--workers", "0",
             "--boxes", "det", "--det-score-thr", "0.9", "--no-flip", "--decode", "dark", "--out", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "on 14 boxes" in lines[0]  # the 14 detections scoring >= 0.9 of coco_tiny's detection file
    assert lines[-1].startswith("AP: ") and 0 <= float(lines[-1][4:]) <= 1
    results = json.loads(out.read_text())
    assert 0 < len(results) <= 14 and set(results[0]) == {"image_id", "category_id", "keypoints", "score", "center",
                                                          "scale"}


def test_cli_rejects_weights_of_another_model(lite18_weights, tmp_path):
    message = cli_error(["--data", TINY, "--model", "lite_hrnet_30", "--weights", lite18_weights, "--workers", "0"])
    assert "--weights" in message and "lite18.pdparams" in message
    message = cli_error(["--data", TINY, "--model", "lite_hrnet_18", "--weights", str(tmp_path / "nope.pdparams")])
    assert "--weights" in message and "not found" in message


# ====================================================================================================
# export.py and predict.py: export -> predictor parity, pose.json, the prediction pipeline, inputs, bad input

import re  # noqa: E402
import shutil  # noqa: E402

import export as ex  # noqa: E402
import predict as pr  # noqa: E402

DEMO = os.path.join(ASSETS, "photos", "hrnet_demo.jpg")
ASTRONAUT = os.path.join(ASSETS, "photos", "astronaut.png")
COCO_INFO = data.keypoint_info_from_category(data.COCO_PERSON_CATEGORY)


@pytest.fixture(scope="module")
def lite_export(lite18_weights, tmp_path_factory):
    """export.py's command line on that checkpoint at 128x96: (folder, what it printed)."""
    out = tmp_path_factory.mktemp("export") / "lite18"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ex.main(["--model", "lite_hrnet_18", "--weights", lite18_weights, "--input-size", "128x96", "--out", str(out)])
    return str(out), printed.getvalue()


@pytest.mark.xdist_group("lite_export")
def test_export_cli_checks_against_eager_and_lists_the_files(lite_export):
    out, printed = lite_export
    lines = printed.strip().splitlines()
    relative = float(re.search(r"max diff \S+ \((\S+) of the largest output\)", lines[0]).group(1))
    assert relative < 1e-4
    assert [line.split()[-1] for line in lines[-5:]] == [os.path.join(out, f) for f in (
        "model.json", "model.pdiparams", "legacy.pdmodel", "legacy.pdiparams", "pose.json")]
    pose = ex.read_pose_json(out)
    assert set(pose) == set(ex.POSE_KEYS + ex.LEGACY_KEYS + ex.DECODE_KEYS + (ex.ONNX_KEY,))
    assert pose["model"] == "lite_hrnet_18" and pose["onnx_file"] is None  # written by --onnx only
    assert (pose["decode"], pose["dark_kernel"]) == ("default", 3)  # a file without a record: the official
    assert pose["input_size"] == [128, 96] and pose["heatmap_size"] == [32, 24] and pose["color"] == "RGB"
    assert pose["mean"] == [0.485, 0.456, 0.406] and pose["std"] == [0.229, 0.224, 0.225]
    assert pose["keypoint_names"] == data.COCO_KEYPOINT_NAMES and pose["flip_pairs"] == COCO_FLIP_PAIRS
    assert pose["skeleton"] == [[a - 1, b - 1] for a, b in data.COCO_SKELETON]
    assert np.allclose(pose["sigmas"], COCO_SIGMAS) and pose["udp"] is False and pose["quantized"] is False
    assert (pose["model_file"], pose["params_file"]) == ("model.json", "model.pdiparams")
    for program in ("model.json", "legacy.pdmodel"):  # model.DepthwiseConv2D's matmul form stays in eager runs
        with open(os.path.join(out, program), "rb") as f:
            text = f.read()
        assert b"depthwise_conv2d" in text and b"unfold" not in text, program


@pytest.mark.xdist_group("lite_export")
def test_exported_lite_hrnet_matches_its_checkpoint(lite18_weights, lite_export):
    model = M.load_weights(M.build_model("lite_hrnet_18"), lite18_weights)
    model.eval()
    run = ex.create_predictor(lite_export[0], device="cpu", threads=2)
    for batch in (1, 3):  # any batch size
        x = np.random.RandomState(batch).randn(batch, 3, 128, 96).astype("float32")
        reference, exported = outputs(model, x), run(x)
        assert exported.shape == (batch, 17, 32, 24)
        assert np.abs(exported - reference).max() / np.abs(reference).max() < 1e-4


def test_export_model_round_trips_hrnet_and_hands_the_model_back(tmp_path):
    paddle.seed(2)
    model = settle_batch_norm(M.build_model("hrnet_w32"), (2, 3, 64, 64))
    model.train()
    files = ex.export_model(model, str(tmp_path), "hrnet_w32", "64x64", COCO_INFO)
    assert files == [str(tmp_path / f) for f in ("model.json", "model.pdiparams", "legacy.pdmodel",
                                                 "legacy.pdiparams", "pose.json")]
    assert model.training and "forward" not in model.__dict__  # still eager, in its own mode
    assert ex.read_pose_json(str(tmp_path))["heatmap_size"] == [16, 16]
    model.eval()
    run = ex.create_predictor(str(tmp_path), device="cpu")
    for batch in (1, 2):
        x = np.random.RandomState(batch).randn(batch, 3, 64, 64).astype("float32")
        reference = outputs(model, x)
        assert np.abs(run(x) - reference).max() / np.abs(reference).max() < 1e-4


@pytest.mark.xdist_group("lite_export")
def test_pose_json_and_predictor_errors_are_one_line(lite_export, tmp_path):
    raises_one_line(FileNotFoundError, "nope not found", ex.read_pose_json, str(tmp_path / "nope"))
    raises_one_line(FileNotFoundError, "has no pose.json", ex.read_pose_json, str(tmp_path))
    raises_one_line(FileNotFoundError, "no model.json", ex.create_predictor, str(tmp_path))
    (tmp_path / "pose.json").write_text("{")
    raises_one_line(ValueError, "pose.json is not valid JSON", ex.read_pose_json, str(tmp_path))
    (tmp_path / "pose.json").write_text('{"model": "hrnet_w32"}')
    raises_one_line(ValueError, "lacks input_size, heatmap_size", ex.read_pose_json, str(tmp_path))
    other = tmp_path / "other_size"
    shutil.copytree(lite_export[0], other)
    pose = json.loads((other / "pose.json").read_text())
    pose.update(input_size=[256, 192], heatmap_size=[64, 48])
    (other / "pose.json").write_text(json.dumps(pose))
    raises_one_line(ValueError, "does not take the 256x192 input its pose.json states", ex.create_predictor,
                    str(other), device="cpu")


def test_create_predictor_runs_a_legacy_format_export_with_int8_kernels(tmp_path):
    """quantize.py saves the old program format (model.pdmodel), which needs FLAGS_enable_pir_api=0 at import."""
    script = ("import paddle; from paddle.static import InputSpec; paddle.seed(0)\n"
              "net = paddle.nn.Conv2D(3, 17, 3, stride=4, padding=1); net.eval()\n"
              "paddle.jit.save(paddle.jit.to_static(net, input_spec=[InputSpec([None, 3, 64, 64], 'float32', 'image')],"
              " full_graph=True), r'%s')\n"
              "paddle.save(net.state_dict(), r'%s')" % (tmp_path / "model", tmp_path / "net.pdparams"))
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300,
                   env=dict(os.environ, FLAGS_enable_pir_api="0"))
    assert (tmp_path / "model.pdmodel").exists() and not (tmp_path / "model.json").exists()
    ex.write_pose_json(str(tmp_path), "conv", "64x64", COCO_INFO, quantized=True, model_file="model.pdmodel")
    net = paddle.nn.Conv2D(3, 17, 3, stride=4, padding=1)
    net.set_state_dict(paddle.load(str(tmp_path / "net.pdparams")))
    x = np.random.RandomState(0).randn(2, 3, 64, 64).astype("float32")
    for int8 in (False, True):  # a float graph has nothing to quantize: int8 kernels must leave it exact
        y = ex.create_predictor(str(tmp_path), device="cpu", precision="int8" if int8 else "fp32")(x)
        assert np.abs(y - outputs(net, x)).max() < 1e-4


def test_onnx_without_paddle2onnx_says_how_to_install_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "paddle2onnx", None)  # makes `import paddle2onnx` fail
    with pytest.raises(SystemExit, match="pip install paddle2onnx"):
        ex.main(["--model", "lite_hrnet_18", "--weights", "unused.pdparams", "--out", str(tmp_path / "x"), "--onnx"])
    assert not (tmp_path / "x").exists()


def dot_finding_network(pose):
    """A stand-in network: every joint's heatmap peaks at the centre of the bright spot in the crop (stride 4)."""
    height, width = pose["heatmap_size"]

    def run(crops):
        heatmaps = np.zeros((len(crops), len(pose["keypoint_names"]), height, width), np.float32)
        for heatmap, crop in zip(heatmaps, crops):
            brightness = crop.sum(axis=0)
            ys, xs = np.nonzero(brightness > brightness.max() / 2)
            heatmap[:] = gaussian_map(height, width, xs.mean() / 4, ys.mean() / 4)
        return heatmaps
    return run


def test_predict_image_maps_crops_back_to_the_image():
    pose = ex.pose_metadata("stand-in", "256x192", COCO_INFO)
    image = np.zeros((300, 400, 3), np.uint8)
    dots = [(60, 100), (200, 150), (330, 240)]
    for x, y in dots:
        cv2.circle(image, (x, y), 3, (255, 255, 255), -1)
    boxes = [((x - 40, y - 70, 80, 140), score) for (x, y), score in zip(dots, (0.9, 0.8, 0.7))]
    people = pr.predict_image(dot_finding_network(pose), image, boxes, pose, batch_size=2)
    assert [p["box_score"] for p in people] == [0.9, 0.8, 0.7]  # three distinct people: none merged by OKS-NMS
    for person, (x, y) in zip(people, dots):
        # the quarter offset is exact to a quarter heatmap pixel: 1 crop pixel, 140 * 1.25 / 256 = 0.7 image pixels
        assert np.abs(person["keypoints"][:, :2] - [x, y]).max() < 1
        assert person["score"] == pytest.approx(person["box_score"])  # all joints score 1
    whole = pr.predict_image(dot_finding_network(pose), image[:, 150:250], pr.whole_image_box(image[:, 150:250]), pose)
    assert np.abs(whole[0]["keypoints"][:, :2] - [50, 150]).max() < 1
    assert pr.predict_image(dot_finding_network(pose), image, [], pose) == []


def test_predict_image_finds_what_evaluate_finds_from_the_same_boxes(lite18_weights):
    model = M.load_weights(M.build_model("lite_hrnet_18"), lite18_weights)
    dataset = data.COCOKeypointDataset(TINY_ANN, TINY_IMAGES, "128x96", train=False, boxes=TINY_DETS,
                                       det_score_thr=0.5)
    expected, _ = ev.evaluate_model(model, dataset, batch_size=8, flip=True, log=lambda *a: None)
    model.eval()
    pose = ex.pose_metadata("lite_hrnet_18", "128x96", COCO_INFO)
    detections = pr.read_detections(TINY_DETS, 0.5)
    found = []
    for image_id in sorted(detections):
        image = data.read_image_rgb(os.path.join(TINY_IMAGES, f"{image_id:012d}.jpg"))
        for person in pr.predict_image(lambda x: outputs(model, x), image, detections[image_id], pose, flip=True):
            found.append((image_id, person["score"], person["keypoints"].reshape(-1)))
    expected = [(r["image_id"], r["score"], np.array(r["keypoints"])) for r in expected]
    assert len(found) == len(expected) > 4
    for (image_a, score_a, keypoints_a), (image_b, score_b, keypoints_b) in zip(sorted(found, key=lambda f: f[:2]),
                                                                                sorted(expected, key=lambda f: f[:2])):
        assert image_a == image_b and score_a == pytest.approx(score_b, abs=1e-6)
        assert np.allclose(keypoints_a, keypoints_b, atol=1e-3)


def test_draw_poses_colours_sides_and_skips_low_scores():
    image = np.zeros((100, 100, 3), np.uint8)
    keypoints = np.zeros((17, 3))
    keypoints[[0, 5, 6, 11]] = [[50, 20, 0.9], [20, 50, 0.9], [80, 50, 0.9], [20, 90, 0.1]]
    drawn = data.draw_poses(image, [{"keypoints": keypoints, "score": 0.9}], COCO_INFO.skeleton, COCO_INFO.flip_pairs)
    assert not image.any()  # a drawn copy
    assert tuple(drawn[50, 20]) == data.LEFT and tuple(drawn[50, 80]) == data.RIGHT and tuple(drawn[20, 50]) == data.MIDDLE
    assert tuple(drawn[50, 50]) == data.MIDDLE  # the shoulder line joins the two sides
    assert not drawn[70:100, :10].any() and not drawn[70:100, 12:28].any()  # hip below kpt_thr: no point, no limb
    boxed = data.draw_poses(image, [{"keypoints": keypoints, "score": 0.9, "box": [5, 5, 90, 90]}], [], [])
    assert boxed[5, 50].any() and not boxed[50, 50].any()


def predict_error(argv):
    return cli_error(argv, pr.main)


@pytest.mark.xdist_group("lite_export")
def test_predict_on_the_demo_photo_writes_drawing_and_json(lite_export, tmp_path, capsys):
    pr.main(["--model-dir", lite_export[0], "--input", DEMO, "--out", str(tmp_path), "--kpt-thr", "-1"])
    assert "1/1 hrnet_demo.jpg: 1 person" in capsys.readouterr().out
    drawn, original = cv2.imread(str(tmp_path / "hrnet_demo.jpg")), cv2.imread(DEMO)
    assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original).max() > 100
    result = json.loads((tmp_path / "predictions.json").read_text())
    assert set(result) == {"model", "input_size", "keypoint_names", "skeleton", "results"}
    assert result["model"] == "lite_hrnet_18" and result["input_size"] == [128, 96]
    [entry] = result["results"]
    assert (entry["file"], entry["width"], entry["height"]) == ("hrnet_demo.jpg", 359, 423)
    [person] = entry["people"]
    assert set(person) == {"box", "box_score", "score", "keypoints"} and person["box"] == [0, 0, 359, 423]
    keypoints = np.array(person["keypoints"])
    assert keypoints.shape == (17, 3) and 0 <= person["score"] <= 1
    # whole image, aspect ratio kept, no padding: the crop spans x 0..359 and y 211.5 -+ 359 / 0.75 / 2
    assert (keypoints[:, 0] >= 0).all() and (keypoints[:, 0] <= 359).all()
    assert (np.abs(keypoints[:, 1] - 211.5) <= 239.4).all()


def test_predict_on_a_folder_skips_and_counts_what_is_not_an_image(lite18_weights, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DEMO, folder / "a.jpg")
    shutil.copy(ASTRONAUT, folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 100)  # a JPEG signature, then nothing
    pr.main(["--model", "lite_hrnet_18", "--weights", lite18_weights, "--input-size", "128x96",
             "--input", str(folder), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "skipping 1 files that are not images" in printed and "skipped 1 unreadable images" in printed
    assert sorted(os.listdir(tmp_path / "out")) == ["a.jpg", "b.png", "predictions.json"]
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())["results"]
    assert [(r["file"], r["width"], r["height"]) for r in results] == [("a.jpg", 359, 423), ("b.png", 512, 512)]
    assert all(len(r["people"]) == 1 and len(r["people"][0]["keypoints"]) == 17 for r in results)


def test_predict_on_a_short_video(lite18_weights, tmp_path):
    frame = cv2.resize(cv2.imread(DEMO), (96, 112))
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 112))
    for i in range(5):
        writer.write(np.roll(frame, 4 * i, axis=1))
    writer.release()
    pr.main(["--model", "lite_hrnet_18", "--weights", lite18_weights, "--input-size", "128x96",
             "--input", str(video), "--out", str(tmp_path / "out"), "--batch-size", "1"])
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    assert len(frames) == 5 and frames[0].shape == (112, 96, 3)
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())["results"]
    assert [r["frame"] for r in results] == [0, 1, 2, 3, 4]
    assert all(r["people"][0]["box"] == [0, 0, 96, 112] for r in results)


def test_predict_with_detection_boxes_and_an_image_without_any(lite18_weights, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("000000000785.jpg", "000000196141.jpg"):
        os.symlink(os.path.join(TINY_IMAGES, name), folder / name)
    shutil.copy(DEMO, folder / "000000999999.jpg")  # an id the detection file does not have
    pr.main(["--model", "lite_hrnet_18", "--weights", lite18_weights, "--input-size", "128x96", "--input",
             str(folder), "--out", str(tmp_path / "out"), "--boxes", TINY_DETS, "--box-thr", "0.5", "--nms-thr", "1"])
    results = {r["file"]: r["people"] for r in json.loads((tmp_path / "out" / "predictions.json").read_text())["results"]}
    detections = json.load(open(TINY_DETS))
    for name in ("000000000785.jpg", "000000196141.jpg"):
        expected = sorted([round(v, 2) for v in d["bbox"]] for d in detections
                          if d["image_id"] == int(name[:-4]) and d["score"] >= 0.5)
        assert expected and sorted(p["box"] for p in results[name]) == expected
    assert results["000000999999.jpg"] == []
    assert cv2.imread(str(tmp_path / "out" / "000000999999.jpg")).shape == cv2.imread(DEMO).shape


def test_hog_people_detector_finds_the_astronaut_and_nobody_on_a_blank_image(lite18_weights, tmp_path, monkeypatch):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((160, 120, 3), 128, np.uint8))
    argv = ["--model", "lite_hrnet_18", "--weights", lite18_weights, "--input-size", "128x96", "--input", str(blank),
            "--out", str(tmp_path / "out"), "--detector", "hog"]
    boxes = pr.hog_people_detector()(cv2.imread(ASTRONAUT))
    assert boxes and all(0 <= x and 0 <= y and x + w <= 512 and y + h <= 512 for (x, y, w, h), _ in boxes)
    pr.main(argv)
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["results"][0]["people"] == []
    monkeypatch.delattr(cv2, "HOGDescriptor")  # an OpenCV 5 install, where HOG moved to opencv-contrib
    assert "pip install 'opencv-python<5'" in predict_error(argv)


@pytest.mark.xdist_group("lite_export")
def test_predict_bad_input_is_one_line(lite18_weights, lite_export, tmp_path):
    out = str(tmp_path / "out")
    model = ["--model", "lite_hrnet_18", "--weights", lite18_weights, "--input-size", "128x96", "--out", out]
    assert "no such image, video or folder" in predict_error(model + ["--input", str(tmp_path / "missing.jpg")])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 100)
    assert "broken.jpg could not be decoded" in predict_error(model + ["--input", str(broken)])
    folder = tmp_path / "no_images"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    assert "no images in this folder (1 other files)" in predict_error(model + ["--input", str(folder)])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_text("not a video")
    assert "neither an image nor a video" in predict_error(model + ["--input", str(garbage)])
    assert "no webcam with this index" in predict_error(model + ["--input", "7"])
    assert "hrnet_demo.jpg is not named by its COCO image id" in predict_error(model + ["--input", DEMO, "--boxes",
                                                                                        TINY_DETS])
    no_pose = tmp_path / "no_pose"
    no_pose.mkdir()
    for name in ("model.json", "model.pdiparams"):
        shutil.copy(os.path.join(lite_export[0], name), no_pose / name)
    assert "has no pose.json" in predict_error(["--model-dir", str(no_pose), "--input", DEMO, "--out", out])
    assert "takes 128x96 crops" in predict_error(["--model-dir", lite_export[0], "--input-size", "256x192",
                                                  "--input", DEMO, "--out", out])
    assert "alternatives" in predict_error(["--model-dir", lite_export[0], "--model", "hrnet_w32", "--input", DEMO])
    assert "would replace the inputs" in predict_error(model[:-2] + ["--input", DEMO, "--out", ASSETS + "/photos"])
    assert "--weights" in predict_error(["--model", "hrnet_w32", "--weights", lite18_weights, "--input", DEMO,
                                         "--out", out])


@pytest.mark.xdist_group("lite_export")
def test_benchmark_prints_latency_and_throughput_at_batch_1_and_8(lite_export, capsys):
    pr.main(["--model-dir", lite_export[0], "--input", DEMO, "--benchmark", "--benchmark-runs", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    runtime = "OpenVINO fp32" if ex.import_openvino() else "paddle.inference fp32"  # --backend auto
    assert lines[0].startswith(f"benchmark: lite_hrnet_18 128x96, {runtime}, flip off")
    for batch, line in zip((1, 8), lines[1:]):
        assert line.startswith(f"batch {batch}:")
        for p50, p90, rate in re.findall(r"p50 +(\S+) ms +p90 +(\S+) ms +(\S+) img/s", line):
            p50, rate = float(p50), float(rate)  # p50 printed to 0.05 ms, the rate from the unrounded p50
            assert 0 < p50 <= float(p90) and 0.99 * batch * 1000 / (p50 + 0.05) - 0.1 <= rate <= \
                1.01 * batch * 1000 / max(p50 - 0.05, 1e-9) + 0.1
        assert re.search(r"outside the network p50 \S+ ms \([\d.]+% of the pipeline\)$", line)


@pytest.mark.xdist_group("lite_export")
def test_benchmark_compare_times_a_second_export_in_the_same_loop(lite_export, capsys, tmp_path):
    pr.main(["--model-dir", lite_export[0], "--compare", lite_export[0], "--input", DEMO, "--benchmark",
             "--benchmark-runs", "3"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "--compare" in line]
    assert [line.split(":")[0] for line in lines] == ["batch 1", "batch 8"]
    for line in lines:  # the same export against itself: the printed ratio is its own two medians' ratio
        other = float(re.search(r"model p50 +(\S+) ms", line).group(1))
        assert other > 0 and 0.2 < float(re.search(r"is (\S+)x as fast", line).group(1)) < 5
    other_size = tmp_path / "other"
    shutil.copytree(lite_export[0], other_size)
    pose = json.load(open(other_size / "pose.json"))
    json.dump(dict(pose, input_size=[256, 192]), open(other_size / "pose.json", "w"))
    with pytest.raises(SystemExit, match=r"--compare .*other: takes 256x192 crops, the benchmarked model 128x96"):
        pr.main(["--model-dir", lite_export[0], "--compare", str(other_size), "--input", DEMO, "--benchmark"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        pr.main(["--model-dir", lite_export[0], "--compare", lite_export[0], "--input", DEMO, "--out", str(tmp_path)])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("error: --compare is a --benchmark option")

# quantize.py: PACT / fake-quant gradients, QAT preparation, the int8 export and its predictor

import quantize as Q  # noqa: E402


def test_pact_clip_forward_backward_match_numpy_and_finite_differences():
    rng = np.random.RandomState(0)
    x = rng.uniform(-3, 3, (4, 5, 6)).astype("float32")
    x[np.abs(np.abs(x) - 1.3) < 0.02] = 0.5  # keep finite differences away from the kinks at +-alpha
    upstream = rng.randn(*x.shape).astype("float32")
    xt = paddle.to_tensor(x, stop_gradient=False)
    alpha = paddle.to_tensor([1.3], stop_gradient=False)
    out = M.PACTClip.apply(xt, alpha)
    np.testing.assert_allclose(out.numpy(), x - np.maximum(x - 1.3, 0) + np.maximum(-1.3 - x, 0), atol=1e-6)
    (out * paddle.to_tensor(upstream)).sum().backward()
    inside = np.abs(x) <= 1.3
    np.testing.assert_allclose(xt.grad.numpy(), upstream * inside, atol=1e-6)
    expected = upstream[x > 1.3].sum() - upstream[x < -1.3].sum()
    assert abs(alpha.grad.item() - expected) < 1e-4

    def loss(a):  # float64 numpy: the clip function PACT differentiates
        return (upstream.astype(np.float64) * np.clip(x, -a, a)).sum()
    eps = 1e-3
    assert abs((loss(1.3 + eps) - loss(1.3 - eps)) / (2 * eps) - alpha.grad.item()) < 1e-3
    for i in range(3):  # d/dx by finite differences, on a few entries inside and outside the clip range
        j = np.unravel_index(rng.randint(x.size), x.shape)
        bump = np.zeros_like(x, dtype=np.float64)
        bump[j] = eps
        fd = ((upstream * np.clip(x + bump, -1.3, 1.3)).sum() - (upstream * np.clip(x - bump, -1.3, 1.3)).sum()) / (2 * eps)
        assert abs(fd - xt.grad.numpy()[j]) < 1e-3


def test_fake_quant_levels_and_straight_through_gradient():
    rng = np.random.RandomState(1)
    x = rng.randn(1000).astype("float32") * 2
    xt = paddle.to_tensor(x, stop_gradient=False)
    q = M.FakeQuant.apply(xt, paddle.to_tensor([2.5]))
    levels = np.round(np.clip(x / 2.5, -1, 1) * 127)
    np.testing.assert_allclose(q.numpy(), levels * 2.5 / 127, atol=1e-6)
    assert len(np.unique(q.numpy())) <= 255 and np.abs(q.numpy()).max() <= 2.5 + 1e-6
    (q * paddle.to_tensor(np.arange(1000, dtype="float32"))).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), np.arange(1000))  # identity: straight through, clipped or not


def test_quant_conv_weight_gradient_is_the_finite_difference_gradient_at_the_quantized_weight():
    """The straight-through estimator: dL/dW is the gradient of the loss with respect to the quantized
    weights it actually used, which finite differences of that (linear) convolution give independently."""
    paddle.seed(0)
    conv = M.QuantConv2D(paddle.nn.Conv2D(3, 4, 3, padding=1), "c", pact=False)
    conv.eval()
    conv.input_scale.set_value(paddle.to_tensor([2.0]))
    rng = np.random.RandomState(2)
    x, r = rng.randn(2, 3, 5, 5).astype("float32"), rng.randn(2, 4, 5, 5).astype("float64")
    (conv(paddle.to_tensor(x)) * paddle.to_tensor(r.astype("float32"))).sum().backward()
    w = conv.weight.numpy().astype(np.float64)
    s = np.abs(w).max(axis=(1, 2, 3), keepdims=True)
    wq = np.round(w / s * 127) * s / 127
    xq = np.round(np.clip(x / 2.0, -1, 1) * 127) * 2.0 / 127

    def loss(weight):
        y = F.conv2d(paddle.to_tensor(xq, dtype="float64"), paddle.to_tensor(weight), padding=1).numpy()
        return (r * y).sum()
    for j in [(0, 0, 0, 0), (1, 2, 1, 1), (3, 1, 2, 0)]:
        bump = np.zeros_like(wq)
        bump[j] = 1e-3
        fd = (loss(wq + bump) - loss(wq - bump)) / 2e-3
        assert abs(fd - conv.weight.grad.numpy()[j]) < 1e-3 * max(1, abs(fd))


def test_activation_scale_is_the_moving_average_of_paddles_quantizer():
    conv = M.QuantConv2D(paddle.nn.Conv2D(1, 1, 1), "c", pact=True, pact_init=3.0)
    maxima, accum, state = [1.0, 5.0, 2.0], 1.0, 1.0
    conv.train()
    for m in maxima:
        x = np.zeros((1, 1, 2, 2), np.float32)
        x[0, 0, 0, 0] = -m
        conv(paddle.to_tensor(x))
        accum, state = 0.9 * accum + min(m, 3.0), 0.9 * state + 1  # the max is taken after the PACT clip at 3
        assert abs(conv.input_scale.item() - accum / state) < 1e-6
    conv.eval()
    conv(paddle.to_tensor(np.full((1, 1, 2, 2), 100.0, np.float32)))
    assert abs(conv.input_scale.item() - accum / state) < 1e-6  # evaluation uses the stored scale


def test_prepare_qat_keeps_float_keys_and_alpha_learns_1000x_faster():
    model = M.build_model("lite_hrnet_18")
    float_keys = set(model.state_dict())
    n_convs = sum(isinstance(layer, paddle.nn.Conv2D) for layer in model.sublayers())
    M.prepare_qat(model)
    quantized = [layer for layer in model.sublayers() if isinstance(layer, M.QuantConv2D)]
    assert len(quantized) == n_convs == 301 and not any(type(l) is paddle.nn.Conv2D for l in model.sublayers())
    extra = set(model.state_dict()) - float_keys
    assert float_keys <= set(model.state_dict()) and len(extra) == 4 * n_convs
    assert {k.rsplit(".", 1)[1] for k in extra} == {"pact_alpha", "input_scale", "input_accum", "input_state"}
    # one Adam step moves each parameter by about lr x its multiplier, whatever the gradient's size
    layer = quantized[0]
    opt = paddle.optimizer.Adam(learning_rate=1e-3, parameters=[layer.weight, layer.pact_alpha])
    x = paddle.to_tensor(np.full((1, 3, 8, 8), 150.0, np.float32))  # above alpha = 100: alpha gets a gradient
    layer.train()
    layer(x).sum().backward()
    before_w, before_a = layer.weight.numpy().copy(), layer.pact_alpha.item()
    opt.step()
    assert abs(abs(layer.pact_alpha.item() - before_a) - 1.0) < 0.01
    assert np.abs(layer.weight.numpy() - before_w).max() < 1.01e-3


@pytest.fixture(scope="module")
def qat_run(synthetic_root, tmp_path_factory):
    """A small trained float Lite-HRNet-18 (64x64), then quantize.py's whole run on it: one QAT epoch,
    evaluation and the int8 export (its int8 evaluation is left to the tests below)."""
    root = tmp_path_factory.mktemp("qat")
    T.train(tiny_run_args(synthetic_root, root / "float", "--epochs", "3"))
    out = io.StringIO()
    argv = ["--data", synthetic_root, "--out", str(root / "qat"), "--model", "lite_hrnet_18", "--input-size", "64x64",
            "--batch-size", "8", "--workers", "0", "--no-flip", "--device", "cpu", "--epochs", "1", "--warmup-steps",
            "0", "--weights", str(root / "float" / "best.pdparams"), "--no-eval-int8", "--float-program"]
    with contextlib.redirect_stdout(out):
        Q.main(argv)
    return dict(root=root, float=str(root / "float" / "best.pdparams"), qat=str(root / "qat" / "best.pdparams"),
                export=str(root / "qat" / "int8"), log=out.getvalue(), argv=argv)


def val_crops(synthetic_root, size="64x64"):
    from data import COCOKeypointDataset
    dataset = COCOKeypointDataset(os.path.join(synthetic_root, "annotations", "person_keypoints_val2017.json"),
                                  os.path.join(synthetic_root, "val2017"), size, train=False)
    return np.stack([dataset[i][0] for i in range(len(dataset))]).astype("float32")


@pytest.mark.xdist_group("qat")
def test_qat_run_reports_and_saves_checkpoint_and_export(qat_run):
    lines = qat_run["log"].strip().splitlines()
    assert lines[-1].startswith("AP: ") and lines[-2].startswith("AP float ") and "QAT (fake-quant)" in lines[-2]
    assert any(line.startswith("int8 model: ") and "204 BatchNorms folded" in line for line in lines)
    state = paddle.load(qat_run["qat"])
    scales = [v.item() for k, v in state["model"].items() if k.endswith(".input_scale")]
    assert len(scales) == 301 and min(scales) > 0.001  # every quantizer saw data (the initial scale is 0.001)
    assert sum(k.endswith(".pact_alpha") for k in state["model"]) == 301
    meta = json.load(open(os.path.join(qat_run["export"], "pose.json")))
    assert meta["quantized"] is True and meta["model_file"] == "model.pdmodel" and meta["input_size"] == [64, 64]
    assert meta["float_model_file"] == "float.pdmodel" and meta["float_params_file"] == "float.pdiparams"
    assert sorted(os.listdir(qat_run["export"])) == ["float.pdiparams", "float.pdmodel", "model.pdiparams",
                                                     "model.pdmodel", "pose.json"]
    assert state["record"]["qat"] and state["record"]["model"] == "lite_hrnet_18"  # the checkpoint says what it is
    with pytest.raises(ValueError, match="--model lite_hrnet_30: .* holds a lite_hrnet_18; leave --model out"):
        Q.load_qat_model(qat_run["qat"], "lite_hrnet_30")


@pytest.mark.xdist_group("qat")
def test_int8_export_is_under_30_percent_of_the_float_export(qat_run, tmp_path):
    from paddle.static import InputSpec
    model = M.load_weights(M.build_model("lite_hrnet_18"), qat_run["float"])
    model.eval()
    x = np.random.RandomState(0).randn(2, 3, 64, 64).astype("float32")
    expected = outputs(model, x)  # before to_static, which turns the model's forward into the traced program
    with ex.layers_traced_as_written():
        paddle.jit.save(paddle.jit.to_static(model, input_spec=[InputSpec([None, 3, 64, 64], "float32", "image")],
                                             full_graph=True), str(tmp_path / "model"))
    traced = Q.PredictorModel(Q.create_predictor(str(tmp_path), onednn=False))(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(traced, expected, atol=1e-5 * np.abs(expected).max())  # traced as written
    float_params = os.path.getsize(tmp_path / "model.pdiparams")
    float_total = float_params + os.path.getsize(tmp_path / "model.json")
    int8_params = os.path.getsize(os.path.join(qat_run["export"], "model.pdiparams"))
    int8_total = int8_params + os.path.getsize(os.path.join(qat_run["export"], "model.pdmodel"))
    assert int8_params < 0.3 * float_params  # the weights are stored as int8
    assert int8_total <= 0.3 * float_total, (int8_total, float_total)


@pytest.mark.xdist_group("qat")
def test_int8_predictor_runs_int8_convolutions_and_matches_the_fake_quant_model(qat_run, synthetic_root, capfd):
    model = Q.load_qat_model(qat_run["qat"])
    model.eval()
    x = val_crops(synthetic_root)
    expected = outputs(model, x)
    # the int8 program itself (float kernels): BatchNorm folding, int8 codes and scales reproduce the QAT model
    int8_program = [os.path.join(qat_run["export"], name) for name in ("model.pdmodel", "model.pdiparams")]
    exported = Q.PredictorModel(ex.paddle_predictor(int8_program, "cpu", None, False, "fp32"))(
        paddle.to_tensor(x)).numpy()
    # Folding BatchNorm changes the order of float operations, so an input lying on a rounding tie may land one
    # level over in some sample, and that change cascades through the sample. A wrong fold, code or scale would
    # change every sample instead: most samples agree to float precision, and the decoded peaks agree everywhere.
    per_sample = np.abs(exported - expected).reshape(len(x), -1).max(axis=1)
    assert (per_sample <= 1e-4 * np.abs(expected).max()).mean() >= 0.75
    peaks_exported, _ = ev.get_max_preds(exported)
    peaks_expected, _ = ev.get_max_preds(expected)
    assert (np.abs(peaks_exported - peaks_expected).max(axis=-1) <= 1).mean() >= 0.95
    capfd.readouterr()
    int8 = Q.PredictorModel(Q.create_predictor(qat_run["export"], "paddle", precision="int8", verbose=True))
    passes = capfd.readouterr().err
    assert "quantized 301 fused_conv2d ops" in passes  # every convolution runs in int8
    assert "quantized 0 pool2d ops" in passes  # and only they: int8 pooling clipped at the next conv's scale
    got = int8(paddle.to_tensor(x)).numpy()
    # oneDNN keeps one scale per tensor (QAT: one per consuming layer) and rounding flips cascade, so the heatmaps
    # of this barely trained 64x64 model follow the fake-quant ones in shape and size, not to float precision;
    # the accuracy bar itself (AP within 1.0 of float) is quantize.py's run on a trained model, not this one
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.95
    assert np.abs(got - expected).mean() < 0.3 * np.abs(expected).mean()


def test_quantize_cli_errors_are_one_line(synthetic_root, tmp_path, lite18_weights):
    base = ["--data", synthetic_root, "--out", str(tmp_path), "--model", "lite_hrnet_18", "--input-size", "64x64",
            "--workers", "0", "--device", "cpu"]
    with pytest.raises(SystemExit, match="--weights FLOAT_CHECKPOINT is needed"):
        Q.main(base)
    with pytest.raises(SystemExit, match=r"lite18.pdparams: no quantizer scales in it, not a QAT checkpoint"):
        Q.main(base + ["--qat-weights", lite18_weights])


# ====================================================================================================
# Checkpoints that say what they are (model, keypoints, input size, UDP, QAT), any-K models, the layering

def fourteen_keypoint_copy(src, dst, dropped=(0, 1, 2)):
    """The synthetic set without the nose and the eyes: a 14-keypoint COCO-format set, images shared."""
    keep = [k for k in range(17) if k not in dropped]
    os.makedirs(os.path.join(dst, "annotations"))
    shutil.copytree(os.path.join(src, "person_detection_results"), os.path.join(dst, "person_detection_results"))
    for split in ("train2017", "val2017"):
        os.symlink(os.path.join(src, split), os.path.join(dst, split))
        path = os.path.join("annotations", f"person_keypoints_{split}.json")
        coco = json.load(open(os.path.join(src, path)))
        category = coco["categories"][0]
        category["keypoints"] = [category["keypoints"][k] for k in keep]
        category["skeleton"] = [[keep.index(a - 1) + 1, keep.index(b - 1) + 1] for a, b in category["skeleton"]
                                if a - 1 in keep and b - 1 in keep]
        for ann in coco["annotations"]:
            joints = np.array(ann["keypoints"]).reshape(17, 3)[keep]
            ann["keypoints"], ann["num_keypoints"] = joints.ravel().tolist(), int((joints[:, 2] > 0).sum())
        json.dump(coco, open(os.path.join(dst, path), "w"))
    return str(dst)


def last_line_ap(printed):
    return float(printed.strip().splitlines()[-1].split()[-1])


@pytest.fixture(scope="module")
def run14(synthetic_root, tmp_path_factory):
    """One short training run on a 14-keypoint set: (data folder, run folder)."""
    root = tmp_path_factory.mktemp("k14")
    data14 = fourteen_keypoint_copy(synthetic_root, root / "data")
    with pytest.warns(UserWarning, match="no --oks-sigmas file"):  # COCO's sigmas for the names COCO has
        T.train(tiny_run_args(data14, root / "run", "--epochs", "1"))
    return data14, root / "run"


@pytest.mark.xdist_group("run14")
def test_a_fourteen_keypoint_model_evaluates_exports_and_predicts_from_its_checkpoint_alone(run14, tmp_path, capsys):
    data14, run = run14
    best = str(run / "best.pdparams")
    record = paddle.load(best)["record"]
    assert (record["model"], record["num_joints"], record["input_size"], record["udp"], record["qat"]) == \
        ("lite_hrnet_18", 14, [64, 64], False, False)
    assert record["keypoint_names"][:3] == ["left_ear", "right_ear", "left_shoulder"]
    assert record["flip_pairs"] == [[k, k + 1] for k in range(0, 14, 2)]
    capsys.readouterr()
    ev.main(["--data", data14, "--weights", best, "--workers", "0", "--no-flip"])  # no --model, no --input-size
    printed = capsys.readouterr().out
    assert "lite_hrnet_18 on" in printed and "input 64x64" in printed
    assert last_line_ap(printed) == pytest.approx(read_metrics(run)[-1]["AP"], abs=1e-3)  # what training measured
    ev.main(["--data", data14, "--weights", best, "--workers", "0", "--no-flip", "--model", "lite_hrnet_18",
             "--input-size", "64x64"])
    assert last_line_ap(capsys.readouterr().out) == last_line_ap(printed)
    exported = tmp_path / "export"
    ex.main(["--weights", best, "--out", str(exported), "--no-legacy"])  # the PIR program is enough here
    pose = json.load(open(exported / "pose.json"))
    assert pose["keypoint_names"] == record["keypoint_names"] and pose["input_size"] == [64, 64]
    assert pose["skeleton"] == record["skeleton"] and pose["flip_pairs"] == record["flip_pairs"]
    image = os.path.join(data14, "val2017", sorted(os.listdir(os.path.join(data14, "val2017")))[0])
    for source in (["--model-dir", str(exported)], ["--weights", best]):
        out = tmp_path / source[0].strip("-")
        pr.main(source + ["--input", image, "--out", str(out)])
        predictions = json.load(open(out / "predictions.json"))
        assert predictions["keypoint_names"] == record["keypoint_names"]
        assert [len(p["keypoints"]) for p in predictions["results"][0]["people"]] == [14]


@pytest.mark.xdist_group("run14")
def test_flags_that_contradict_a_checkpoint_are_one_line_errors(run14, synthetic_root, lite18_weights, tmp_path):
    data14, run = run14
    best, last = str(run / "best.pdparams"), str(run / "last.pdparams")
    assert "holds a lite_hrnet_18; leave --model out" in cli_error(
        ["--data", data14, "--weights", best, "--model", "hrnet_w32", "--workers", "0"])
    assert "predicts 14 keypoints (left_ear, right_ear, left_shoulder, ...), the data has 17" in cli_error(
        ["--data", synthetic_root, "--weights", best, "--workers", "0"])
    assert "does not say which network it holds" in cli_error(["--data", TINY, "--weights", lite18_weights])
    with pytest.raises(SystemExit, match="holds a lite_hrnet_18; leave --model out"):
        ex.main(["--weights", best, "--model", "lite_hrnet_30", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="a weights file without optimizer state .* resume from a run's last"):
        T.main(["--resume", best, "--data", data14])
    with pytest.raises(SystemExit, match=r"--resume .*last.pdparams.* predicts 14 keypoints .* the data has 17"):
        T.main(["--resume", last, "--data", synthetic_root, "--out", str(tmp_path / "r")])
    # the run continues from the checkpoint alone: every flag left out is the interrupted run's
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    T.main(["--resume", str(resumed / "last.pdparams"), "--out", str(resumed), "--epochs", "2"])
    assert [m["epoch"] for m in read_metrics(resumed)] == [1, 2]


@pytest.mark.xdist_group("qat")
def test_evaluate_scores_a_qat_checkpoint_as_quantize_did(qat_run, synthetic_root, capsys):
    ev.main(["--data", synthetic_root, "--weights", qat_run["qat"], "--workers", "0", "--no-flip"])
    printed = capsys.readouterr().out
    assert "lite_hrnet_18 (QAT) on" in printed
    qat_ap = float(re.search(r"QAT \(fake-quant\) (\S+)", qat_run["log"]).group(1))
    assert last_line_ap(printed) == pytest.approx(qat_ap, abs=1e-3)


def test_scripts_import_each_other_without_a_cycle_or_private_names():
    import ast
    scripts = ["data", "model", "export", "evaluate", "predict", "train", "distill", "quantize"]  # README's order
    for position, name in enumerate(scripts):
        for node in ast.walk(ast.parse(open(os.path.join(HERE, name + ".py")).read())):
            imported = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                        else [node.module] if isinstance(node, ast.ImportFrom) else [])
            for module in set(imported) & set(scripts):
                assert scripts.index(module) < position, f"{name}.py imports {module}.py, which comes later"
                if isinstance(node, ast.ImportFrom):
                    assert not any(alias.name.startswith("_") for alias in node.names), (name, module)
# ---- issue 12: real keypoint datasets as they come, and bad inputs that never cost a run

import glob  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import predict as P  # noqa: E402

# Public sets in COCO format as they come, made from the real COCO annotations of assets/: per set its keypoint
# names, where each joint comes from (a COCO index, or the midpoint of two), the fields it lacks, its skeleton.
AIC_NAMES = ["Right Shoulder", "Right Elbow", "Right Wrist", "Left Shoulder", "Left Elbow", "Left Wrist", "Right Hip",
             "Right Knee", "Right Ankle", "Left Hip", "Left Knee", "Left Ankle", "Head Top", "Neck"]
MHP_NAMES = ["Right-ankle", "Right-knee", "Right-hip", "Left-hip", "Left-knee", "Left-ankle", "Pelvis", "Thorax",
             "Upper-neck", "Head-top", "Right-wrist", "Right-elbow", "Right-shoulder", "Left-shoulder", "Left-elbow",
             "Left-wrist"]
PUBLIC_STYLES = {
    "crowdpose": (data.COCO_KEYPOINT_NAMES[5:] + ["head", "neck"], list(range(5, 17)) + [0, (5, 6)], (),
                  data.COCO_SKELETON),  # CrowdPose's files carry COCO's 17-joint skeleton
    "aic": (AIC_NAMES, [6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 0, (5, 6)], ("area", "iscrowd"), None),
    "mhp": (MHP_NAMES, [16, 14, 12, 11, 13, 15, (11, 12), (5, 6), 0, (1, 2), 10, 8, 6, 5, 7, 9], ("num_keypoints",),
            None),
    "ochuman": (data.COCO_KEYPOINT_NAMES, list(range(17)), ("num_keypoints", "area"), data.COCO_SKELETON),
}
EXPECTED_SIGMAS = {"crowdpose": [.079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089, .079, .079],
                   "aic": [0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642,
                           0.03686941, 0.01981803, 0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173],
                   "ochuman": list(COCO_SIGMAS)}


def convert_keypoints(keypoints, sources):
    joints = np.array(keypoints, np.float64).reshape(17, 3)
    out = []
    for source in sources:
        pair = joints[list(source)] if isinstance(source, tuple) else joints[[source]]
        labelled = (pair[:, 2] > 0).all()
        out += [*(pair[:, :2].mean(axis=0) if labelled else (0, 0)), int(pair[:, 2].min()) if labelled else 0]
    return [float(v) for v in out]


def public_style_set(root, style):
    """root/<style>: a COCO-layout folder (train from coco_mini_train, val from coco_tiny, the real images linked)
    whose annotations are converted to the style's keypoints and lack the fields the style lacks."""
    names, sources, missing, skeleton = PUBLIC_STYLES[style]
    folder = os.path.join(str(root), style)
    os.makedirs(os.path.join(folder, "annotations"))
    for split, ann_file, images in (("train2017", MINI_ANN, MINI_IMAGES), ("val2017", TINY_ANN, TINY_IMAGES)):
        coco = json.load(open(ann_file))
        for ann in coco["annotations"]:
            ann["keypoints"] = convert_keypoints(ann["keypoints"], sources)
            for key in missing:
                del ann[key]
        if style == "ochuman":  # OCHuman has people with a box and a mask but no keypoints
            coco["annotations"][0]["keypoints"] = None
        coco["categories"] = [dict(id=1, name="person", supercategory="person", keypoints=names,
                                   **({"skeleton": skeleton} if skeleton else {}))]
        json.dump(coco, open(os.path.join(folder, "annotations", f"person_keypoints_{split}.json"), "w"))
        os.symlink(images, os.path.join(folder, split))
    return folder


@pytest.mark.parametrize("style", sorted(PUBLIC_STYLES))
def test_public_keypoint_sets_load_and_score_as_they_come(style, tmp_path):
    folder = public_style_set(tmp_path, style)
    names, sources, missing, _ = PUBLIC_STYLES[style]
    ann_file = os.path.join(folder, "annotations", "person_keypoints_val2017.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_set = data.COCOKeypointDataset(os.path.join(folder, "annotations", "person_keypoints_train2017.json"),
                                             os.path.join(folder, "train2017"), "64x64", train=True)
        val_set = data.COCOKeypointDataset(ann_file, os.path.join(folder, "val2017"), "64x64", train=False)
    said = [str(w.message) for w in caught]
    for key in missing:  # each file's filling-in is said once, naming the file
        assert sum("person_keypoints_val2017.json: filled in" in m and f"missing '{key}'" in m for m in said) == 1
    info = val_set.info
    # the flip pairs are exactly the joints that come from COCO's [left, right] pairs, found from the names alone
    expected_pairs = sorted([i, j] for i, a in enumerate(sources) for j, b in enumerate(sources) if [a, b] in
                            COCO_FLIP_PAIRS)
    assert info.flip_pairs == expected_pairs and len(expected_pairs) == (8 if style == "ochuman" else 6) and info.flip
    lower_coco = {11, 12, 13, 14, 15, 16}
    assert info.upper_body_ids == [i for i, s in enumerate(sources) if not set(np.atleast_1d(s)) <= lower_coco]
    # CrowdPose's copy of COCO's skeleton is dropped (drawing only), OCHuman's is COCO's own
    assert info.skeleton == ([[a - 1, b - 1] for a, b in data.COCO_SKELETON] if style == "ochuman" else [])
    # MHP: no sigmas of its own, so COCO's for the joints COCO has (by name) and 0.025 for the rest
    sided = {i for pair in expected_pairs for i in pair}
    mhp_sigmas = [COCO_SIGMAS[s] if i in sided else 0.025 for i, s in enumerate(sources)]
    np.testing.assert_allclose(info.sigmas, EXPECTED_SIGMAS.get(style, mhp_sigmas), rtol=1e-6)
    assert len(train_set) == independent_count(os.path.join(folder, "annotations", "person_keypoints_train2017.json"))
    assert len(val_set) == independent_count(ann_file) > 0
    image, target, weight, _ = train_set[0]
    assert image.shape == (3, 64, 64) and target.shape == (len(names), 16, 16)
    # pycocotools scores the file as it came (no area or num_keypoints): its own people as predictions score 1
    anns = json.load(open(ann_file))["annotations"]
    results = [dict(image_id=a["image_id"], category_id=1, keypoints=a["keypoints"], score=1.0) for a in anns
               if a["keypoints"] and max(a["keypoints"][2::3]) > 0 and not a.get("iscrowd", 0)]
    stats = ev.coco_keypoint_stats(ann_file, results)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)


@pytest.mark.parametrize("names, pairs", [
    (["left_shoulder", "right_shoulder", "nose"], [[0, 1]]),                      # COCO, CrowdPose
    (["Right Shoulder", "Left Shoulder", "Neck"], [[1, 0]]),                      # AI Challenger, right first
    (["Right-ankle", "Left-ankle", "Left-hip", "Right-hip"], [[1, 0], [2, 3]]),   # MHP
    (["l_shoulder", "r_shoulder", "L_Hip", "R_Hip"], [[0, 1], [2, 3]]),
    (["shoulder_l", "shoulder_r", "hip.L", "hip.R"], [[0, 1], [2, 3]]),
    (["leftShoulder", "rightShoulder", "LElbow", "RElbow", "leftknee", "rightknee"], [[0, 1], [2, 3], [4, 5]]),
    (["lshoulder", "rshoulder", "lower_neck", "rear"], [[0, 1]]),                 # glued l/r only with both sides
])
def test_flip_pairs_from_every_naming_style(names, pairs):
    assert data.flip_pairs_from_names(names) == (pairs, [])


def test_keypoints_without_pairs_train_without_flip_unless_given(tmp_path):
    category = dict(id=1, name="person-issue12-nopairs", keypoints=["head", "hand_a", "hand_b"])
    with pytest.warns(UserWarning, match="no left/right pairs in their names.*without flip augmentation"):
        info = data.keypoint_info_from_category(category)
    assert info.flip_pairs == [] and not info.flip
    one_sided = dict(category, keypoints=["left_hand", "right_hand", "left_foot"])
    with pytest.warns(UserWarning, match="no counterpart for left_foot"):
        assert not data.keypoint_info_from_category(one_sided).flip
    given = data.keypoint_info_from_category(category, flip_pairs=["hand_a,2"])
    assert given.flip_pairs == [[1, 2]] and given.flip
    for bad in (["1,1"], ["1,7"], ["1"], ["1,2", "2,0"], ["hand_c,1"]):
        raises_one_line(ValueError, "--flip-pairs", data.keypoint_info_from_category, category, flip_pairs=bad)
    # the dataset then never mirrors: a run with flip probability 1 gives the plain crops
    image = np.full((120, 100, 3), 80, np.uint8)
    cv2.rectangle(image, (10, 10), (40, 100), (0, 0, 255), -1)
    ann, images = write_coco(str(tmp_path), [image], [dict(image_id=1, bbox=[5, 5, 90, 110], keypoints=[
        20, 20, 2, 30, 60, 2, 70, 60, 2])], category)
    flipped = data.COCOKeypointDataset(ann, images, "64x64", train=True, flip_prob=1.0, rot_prob=0, scale_factor=0,
                                       half_body_prob=0)
    plain = data.COCOKeypointDataset(ann, images, "64x64", train=False)
    np.testing.assert_array_equal(flipped[0][0], plain[0][0])


def test_a_skeleton_for_another_keypoint_set_is_dropped_with_one_warning():
    category = dict(id=1, name="person-issue12-skeleton", keypoints=PUBLIC_STYLES["crowdpose"][0],
                    skeleton=data.COCO_SKELETON)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # train set, val set, every evaluation: said once
            assert data.keypoint_info_from_category(category).skeleton == []
    assert [str(w.message) for w in caught if "skeleton" in str(w.message)] == [
        "category 'person-issue12-skeleton': its skeleton refers to keypoints outside 1..14 (made for another "
        "keypoint set?); drawing keypoints without limbs"]
    assert data.keypoint_info_from_category(dict(category, skeleton=[["a", 2]])).skeleton == []


def test_malformed_annotation_values_are_one_line_errors_naming_file_and_id(tmp_path):
    for field, value, match in (("keypoints", "nan", "keypoints that are not all finite numbers"),
                                ("keypoints", "string", "keypoints that are not all finite numbers"),
                                ("bbox", ["a", 1, 2, 3], "'bbox'.*expected 4 finite numbers"),
                                ("bbox", [1, 2, 3], "'bbox'.*expected 4 finite numbers"),
                                ("area", "big", "'area'")):
        coco = json.load(open(TINY_ANN))
        ann = coco["annotations"][3]
        if value == "nan":
            ann["keypoints"][4] = float("nan")
        elif value == "string":
            ann["keypoints"][4] = "12"
        else:
            ann[field] = value
        path = tmp_path / f"bad_{field}_{len(str(value))}.json"
        path.write_text(json.dumps(coco))  # json writes NaN as NaN, which Python's json reads back
        raises_one_line(ValueError, rf"{path.name}: annotation {ann['id']} .*{match}", data.COCOKeypointDataset,
                        str(path), TINY_IMAGES, "64x64", train=True)


def test_empty_detection_boxes_are_skipped_and_counted(tmp_path):
    detections = json.load(open(TINY_DETS))
    bad = [dict(detections[0], bbox=[10, 10, 0, 50]), dict(detections[1], bbox=[10, 10, 40, -5]),
           dict(detections[2], bbox=[5, 5, 0.5, 0.5])]
    path = tmp_path / "dets_with_empty_boxes.json"
    path.write_text(json.dumps(detections + bad))
    clean = data.COCOKeypointDataset(TINY_ANN, TINY_IMAGES, "64x64", train=False, boxes=TINY_DETS)
    with pytest.warns(UserWarning, match="dets_with_empty_boxes.json: skipped 3 boxes less than 1 px"):
        dirty = data.COCOKeypointDataset(TINY_ANN, TINY_IMAGES, "64x64", train=False, boxes=str(path))
    assert len(dirty) == len(clean) and dirty.num_skipped == clean.num_skipped + 3
    np.testing.assert_array_equal(dirty.scores, clean.scores)
    with pytest.raises(ValueError, match="dets_with_empty_boxes.json.*expected 4 finite numbers"):
        path.write_text(json.dumps(detections + [dict(detections[0], bbox=[1, 2, "x", 4])]))
        data.COCOKeypointDataset(TINY_ANN, TINY_IMAGES, "64x64", train=False, boxes=str(path))


def test_an_ai_challenger_style_set_trains_one_epoch_and_evaluates_with_data_alone(tmp_path, capsys):
    folder = public_style_set(tmp_path, "aic")
    out = tmp_path / "run"
    T.main(["--data", folder, "--out", str(out), "--model", "lite_hrnet_18", "--input-size", "64x64", "--epochs", "1",
            "--batch-size", "16", "--workers", "0", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "lite_hrnet_18 64x64, 74 train / 12 val samples" in printed and printed.strip().endswith(
        f"AP: {read_metrics(out)[0]['AP']:.3f}")
    assert cv2.imread(str(out / "predictions.jpg")) is not None
    ev.main(["--data", folder, "--model", "lite_hrnet_18", "--weights", str(out / "best.pdparams"),
             "--input-size", "64x64", "--workers", "0", "--device", "cpu"])
    assert capsys.readouterr().out.strip().endswith(f"AP: {read_metrics(out)[0]['AP']:.3f}")


def all_finite_checkpoint(path):
    state = paddle.load(str(path))
    state = state.get("model", state)
    return all(np.isfinite(np.asarray(v)).all() for v in state.values())


def test_diverging_training_stops_before_any_non_finite_weight_is_saved(synthetic_root, tmp_path):
    T.train(tiny_run_args(synthetic_root, tmp_path, "--epochs", "1"))
    good = (tmp_path / "last.pdparams").read_bytes()
    # whichever shows first, the loss or the gradients, names the step
    with pytest.raises(SystemExit, match=r"^error: (gradients became non-finite|loss became (nan|inf)) at step \d+ "
                                         r"\(epoch 2, batch \d+\); stopping. The last good checkpoint is "
                                         r".*last.pdparams"):
        T.train(tiny_run_args(synthetic_root, tmp_path, "--epochs", "3", "--lr", "1e10",
                              "--resume", str(tmp_path / "last.pdparams")))
    assert (tmp_path / "last.pdparams").read_bytes() == good
    assert all_finite_checkpoint(tmp_path / "last.pdparams")
    # a finite loss with NaN gradients (sqrt at 0 times 0) stops before the update
    model = M.build_model("lite_hrnet_18")
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    optimizer = paddle.optimizer.Adam(learning_rate=1e-3, parameters=model.parameters())
    x = paddle.randn([2, 3, 64, 64])
    with pytest.raises(FloatingPointError, match="gradients became non-finite"):
        T.training_step(model, optimizer, lambda heatmaps, *_: paddle.sqrt((heatmaps * 0).sum()), x, None, None)
    assert all(np.array_equal(before[k], v.numpy()) for k, v in model.state_dict().items() if "_mean" not in k
               and "_variance" not in k)  # BatchNorm statistics move in any forward pass
    # a weight that turned non-finite outside the gradients (here a BatchNorm statistic) is never saved either
    args = tiny_run_args(synthetic_root, tmp_path / "bn", "--epochs", "1")
    model = M.build_model(args.model)
    statistic = next(value for name, value in model.state_dict().items() if name.endswith("_mean"))
    statistic.set_value(np.full(statistic.shape, np.inf, np.float32))
    with pytest.raises(SystemExit, match=r"weights became non-finite \(1 tensors, e\.g\. .*_mean\) at step 5 "
                                         r"\(epoch 1, batch 5\); stopping. No checkpoint was written yet"):
        T.train(args, model=model)
    assert not (tmp_path / "bn" / "last.pdparams").exists()


def test_an_unreadable_val_image_costs_only_its_picture(synthetic_root, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for name in ("annotations", "train2017"):
        os.symlink(os.path.join(synthetic_root, name), root / name)
    shutil.copytree(os.path.join(synthetic_root, "val2017"), root / "val2017")
    first = sorted(os.listdir(root / "val2017"))[0]
    (root / "val2017" / first).write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        T.train(tiny_run_args(str(root), out, "--epochs", "1", "--eval-every", "1"))
    assert "predictions.jpg: skipped 1 unreadable val images" in printed.getvalue()
    assert "AP" in read_metrics(out)[0] and all_finite_checkpoint(out / "last.pdparams")
    assert cv2.imread(str(out / "predictions.jpg")).shape == (2 * 128, 4 * 160, 3)  # 7 images, 4 per row


@pytest.mark.parametrize("flag, value, expected", [
    ("--epochs", "0", "an integer >= 1"), ("--epochs", "-1", "an integer >= 1"), ("--batch-size", "0", ">= 1"),
    ("--workers", "-1", "an integer >= 0"), ("--lr", "0", "a number > 0"), ("--lr", "nan", "a number > 0"),
    ("--log-every", "0", ">= 1"), ("--eval-every", "0", ">= 1"), ("--flip-prob", "1.5", ">= 0 and <= 1"),
    ("--seed", "-3", ">= 0"), ("--warmup-steps", "x", "expected an integer, got 'x'")])
def test_out_of_range_training_numbers_are_argparse_errors(flag, value, expected, capsys):
    import distill
    for main in (T.main, distill.main):  # distill.py and quantize.py share train.py's flags
        with pytest.raises(SystemExit) as exit_info:
            main([flag, value, "--teacher", "t.pdparams"] if main is distill.main else [flag, value])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"error: argument {flag}: expected" in err and expected in err


def test_ohkm_above_the_keypoint_count_is_a_one_line_error(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="--ohkm 18: more than the dataset's 17 keypoints"):
        T.train(tiny_run_args(synthetic_root, tmp_path, "--ohkm", "18"))


def test_data_loader_workers_exit_when_training_is_killed(synthetic_root, tmp_path):
    run = subprocess.Popen([sys.executable, "train.py", "--data", synthetic_root, "--out", str(tmp_path),
                            "--model", "lite_hrnet_18", "--input-size", "64x64", "--batch-size", "4",
                            "--epochs", "100", "--workers", "2", "--device", "cpu"],
                           cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def children():
        found = []
        for task in os.listdir(f"/proc/{run.pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(pid) for pid in open(f"/proc/{run.pid}/task/{task}/children").read().split()]
        return found

    def running(pid):  # a zombie waits for a reaper (none in some containers) but holds no memory
        with contextlib.suppress(OSError):
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        return False

    try:
        deadline = time.time() + 120
        while len(workers := children()) < 2 and time.time() < deadline and run.poll() is None:
            time.sleep(0.1)
        assert len(workers) == 2, "the training run never started its two workers"
        time.sleep(1)  # mid-epoch, workers busy
        workers = children() or workers
    finally:
        run.kill()
        run.wait()
    deadline = time.time() + 10
    while any(map(running, workers)) and time.time() < deadline:
        time.sleep(0.1)
    alive = [pid for pid in workers if running(pid)]
    for pid in alive:
        os.kill(pid, 9)
    for pid in workers:  # the batches in shared memory that the killed parent never released
        for name in glob.glob(f"/dev/shm/paddle_{pid}_*"):
            os.remove(name)
    assert not alive, f"workers {alive} outlived their killed parent by 10 s"


def test_results_files_that_are_not_keypoint_results_are_one_line_errors(tmp_path):
    for name, text, expected in (("ints.json", "[1, 2, 3]", "entry 0 is 1, expected a JSON list"),
                                 ("number.json", "7", "holds a int, expected a JSON list"),
                                 ("truncated.json", '[{"image_id": 785, "keypoi', "not valid JSON"),
                                 ("no_score.json", '[{"image_id": 785, "category_id": 1, "keypoints": [1, 2, 1]}]',
                                  "entry 0 is .*expected"),
                                 ("nan.json", '[{"image_id": 785, "keypoints": [NaN, 2, 1], "score": 1}]',
                                  "finite numbers"),
                                 ("short.json", '[{"image_id": 785, "category_id": 1, "keypoints": [1, 2, 1], '
                                                '"score": 1}]', "lacks a score or 51 keypoint values")):
        (tmp_path / name).write_text(text)
        message = cli_error(["--data", TINY, "--results", str(tmp_path / name)])
        assert re.search(rf"--results {tmp_path / name}.*{expected}", message), message


def test_predict_says_what_is_wrong_with_an_input(tmp_path, monkeypatch):
    fake = tmp_path / "photo.jpg"
    fake.write_text("a text file, not a photo")
    model = ["--model", "lite_hrnet_18", "--weights", "unused.pdparams", "--out", str(tmp_path / "out")]
    assert "photo.jpg: not a readable image" in cli_error(["--input", str(fake)] + model, P.main)
    folder = tmp_path / "locked"
    folder.mkdir()

    def no_permission(path):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(os, "listdir", no_permission)  # root ignores chmod: refuse the listing itself
    assert cli_error(["--input", str(folder)] + model, P.main) == \
        f"error: --input {folder}: cannot read this folder (Permission denied)"


def test_pose_json_with_wrong_types_is_a_one_line_error(tmp_path):
    good = ex.pose_metadata("lite_hrnet_18", "128x96", data.keypoint_info_from_category(data.COCO_PERSON_CATEGORY))
    for key, value in (("input_size", 5), ("input_size", [128, "96"]), ("keypoint_names", "nose"),
                       ("flip_pairs", [[1]]), ("sigmas", [0.1] * 16 + [None]), ("udp", "no"), ("mean", None)):
        (tmp_path / "pose.json").write_text(json.dumps(dict(good, **{key: value})))
        raises_one_line(ValueError, f"pose.json: {key} is .*, expected", ex.read_pose_json, str(tmp_path))
    (tmp_path / "pose.json").write_text(json.dumps(good))
    assert ex.read_pose_json(str(tmp_path)) == good


# ---- issue 13: video (track ids, One-Euro smoothing, --det-every, a PaddleDetection detector, video benchmark)

class TruthNetwork:
    """A stand-in pose network for a synthetic video (data.make_synthetic_video's truth): a crop's heatmaps peak
    where the joints of the figure whose box centre is nearest the crop's centre fall (plus Gaussian noise of
    `noise` image pixels); joints outside the crop or the frame, or no figure near the centre, give empty maps.
    It learns each crop's geometry by standing in for predict.crop_and_normalize, the frame from the source."""

    def __init__(self, truth, pose, noise=0.0, seed=0):
        self.truth, self.pose, self.noise, self.rng = truth, pose, noise, np.random.default_rng(seed)
        self.frame, self.pending = None, []

    def crop(self, image_rgb, center, scale, *rest):
        self.pending.append((center, scale, image_rgb.shape))
        return data.crop_and_normalize(image_rgb, center, scale, *rest)

    def frames(self, items):
        for index, image in items:
            self.frame = index
            yield index, image

    def __call__(self, crops):
        h, w = self.pose["heatmap_size"]
        heatmaps = np.zeros((len(crops), 17, h, w), np.float32)
        joints, boxes = self.truth["joints"][self.frame], self.truth["boxes"][self.frame]
        for heatmap, (center, scale, shape) in zip(heatmaps, self.pending[:len(crops)]):
            distance = np.linalg.norm(boxes[:, :2] + boxes[:, 2:] / 2 - center, axis=1)
            if distance.min() > 0.3 * scale.max() * data.PIXEL_STD:
                continue
            figure = joints[distance.argmin()] + self.rng.normal(0, self.noise, (17, 2))
            points = data.affine_transform(figure, data.get_affine_transform(center, scale, 0, (w, h)))
            for k, ((x, y), (ix, iy)) in enumerate(zip(points, figure)):
                if 0 <= x < w and 0 <= y < h and 0 <= ix < shape[1] and 0 <= iy < shape[0]:
                    heatmap[k] = gaussian_map(h, w, x, y)
        del self.pending[:len(crops)]
        return heatmaps


def run_on_video(monkeypatch, tmp_path, truth, video, argv=(), noise=0.0):
    """predict.py's video loop on `video` with TruthNetwork: (results, frames the detector ran on)."""
    args = pr.parse_args(["--input", str(video), "--out", str(tmp_path / "out"), "--decode", "dark", *argv])
    pose = ex.pose_metadata("truth", "256x192", COCO_INFO)
    net = TruthNetwork(truth, pose, noise)
    monkeypatch.setattr(pr, "crop_and_normalize", net.crop)
    source = pr.read_input(args.input)
    source.items = net.frames(source.items)
    boxes_for, padding, _ = pr.box_source(args, source.kind)
    detected = []

    def counted(index, image):
        detected.append(index)
        return boxes_for(index, image)

    results, _ = pr.predict_input(args, net, pose, source, counted, padding, log=lambda *a, **k: None)
    return results, detected


def truth_matches(results, truth, max_px=8.0):
    """found[t][i]: (track_id, keypoints) of the person of frame t whose keypoints found (score > 0.5) lie on
    figure i (mean distance < max_px), else None."""
    found = []
    for result, joints in zip(results, truth["joints"]):
        people = [(p["track_id"], np.array(p["keypoints"])) for p in result["people"]]
        row = []
        for figure in joints:
            errors = [np.linalg.norm(kpts[:, :2] - figure, axis=1)[kpts[:, 2] > 0.5].mean()
                      if (kpts[:, 2] > 0.5).sum() >= 3 else np.inf for _, kpts in people]
            row.append(people[int(np.argmin(errors))][:2] if errors and min(errors) < max_px else None)
        found.append(row)
    return found


@pytest.mark.parametrize("det_every", [1, 4])
def test_track_ids_stay_with_their_figures_through_crossings_and_missed_detections(monkeypatch, tmp_path, det_every):
    video = tmp_path / "walk.mp4"
    truth = data.make_synthetic_video(str(video), num_frames=60, num_people=4, seed=0)
    centres = truth["boxes"][..., 0] + truth["boxes"][..., 2] / 2
    assert sum(np.diff(np.sign(centres[:, i] - centres[:, j])).astype(bool).sum()
               for i in range(4) for j in range(i)) >= 4  # figures pass one another four times
    rng = np.random.default_rng(0)  # a detector: jittered true boxes, one in ten missed
    boxes = [dict(image_id=t, category_id=1, score=0.9, bbox=list(truth["boxes"][t, i] + rng.normal(0, 3, 4)))
             for t in range(60) for i in range(4) if rng.random() > 0.1]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    results, detected = run_on_video(monkeypatch, tmp_path, truth, video,
                                     ["--boxes", str(tmp_path / "boxes.json"), "--det-every", str(det_every)])
    assert len(results) == 60 and all("track_id" in p for r in results for p in r["people"])
    if det_every > 1:
        assert len(detected) < 40
    right = links = 0
    found = truth_matches(results, truth)
    for i in range(4):
        seen = [row[i][0] for row in found if row[i] is not None]  # the figure's ids, frame after frame
        assert len(seen) >= 45  # one in ten detections missed
        links += len(seen) - 1
        right += sum(a == b for a, b in zip(seen, seen[1:]))
    assert right / links >= 0.95


def test_one_euro_filter_is_an_exponential_smoother_at_rest_and_follows_speed():
    rng = np.random.default_rng(0)
    signal = rng.normal(0, 1, (30, 4, 2))
    smoothed = pr.OneEuroFilter(min_cutoff=2.0, beta=0.0)
    weight = 1 / (1 + 25 / (2 * np.pi * 2.0))  # beta 0: a low-pass at 2 Hz sampled at 25 Hz, i.e. this EMA
    expected = signal[0]
    for t, x in enumerate(signal):
        expected = x if t == 0 else expected + weight * (x - expected)
        np.testing.assert_allclose(smoothed(x, t / 25), expected)
    lag = {}
    for beta in (0.0, 0.05):  # a point moving at 100 px/s
        follow = pr.OneEuroFilter(1.0, beta)
        lag[beta] = [4.0 * t - follow([[4.0 * t, 0.0]], t / 25)[0, 0] for t in range(100)][-1]
    assert 0 < lag[0.05] < 2.5 and lag[0.0] > 5 * lag[0.05]  # the speed raises the cutoff: far less lag


def test_smoothing_steadies_a_still_figure_and_follows_moving_ones(monkeypatch, tmp_path):
    still = tmp_path / "still.mp4"
    truth = data.make_synthetic_video(str(still), num_frames=40, num_people=1, speed=(0, 0), seed=1)
    jitter = {}
    for smooth in ("none", "one-euro"):
        results, _ = run_on_video(monkeypatch, tmp_path, truth, still, ["--smooth", smooth], noise=2.0)
        keypoints = np.array([r["people"][0]["keypoints"] for r in results])[:, :, :2]
        jitter[smooth] = np.linalg.norm(np.diff(keypoints[10:], axis=0), axis=2).mean()
    assert jitter["none"] > 1.5 and jitter["none"] >= 3 * jitter["one-euro"]
    moving = tmp_path / "moving.mp4"
    truth = data.make_synthetic_video(str(moving), num_frames=40, num_people=2, speed=(3, 4), seed=2,
                                      boxes_path=str(tmp_path / "boxes.json"))
    results, _ = run_on_video(monkeypatch, tmp_path, truth, moving, ["--boxes", str(tmp_path / "boxes.json")])
    lag = [np.linalg.norm(found[i][1][:, :2] - truth["joints"][t, i], axis=1)[found[i][1][:, 2] > 0.5].mean()
           for t, found in enumerate(truth_matches(results, truth)) if t >= 5 for i in range(2) if found[i]]
    assert len(lag) >= 60 and np.mean(lag) < 3.0  # speed 3-4 px a frame, noise-free: the filter's lag alone


def test_det_every_detects_again_a_person_who_leaves_and_returns(monkeypatch, tmp_path):
    video, boxes = tmp_path / "out_and_back.mp4", tmp_path / "boxes.json"
    truth = data.make_synthetic_video(str(video), num_frames=70, num_people=1, size=(160, 120), walk=(-0.5, 1.5),
                                      speed=(7, 8), seed=1, boxes_path=str(boxes))
    inside = truth["inside"][:, 0]
    assert inside[0] and not inside.all() and inside[-1]  # in the frame, out of it, and back
    results, detected = run_on_video(monkeypatch, tmp_path, truth, video, ["--boxes", str(boxes), "--det-every", "10"])
    found = np.array([row[0] is not None for row in truth_matches(results, truth)])
    joints = truth["joints"][:, 0]
    in_frame = ((joints >= 0) & (joints < [160, 120])).all(axis=2).sum(axis=1)  # joints inside the frame
    assert found[inside].all()  # each frame it is in: followed, or found again on the first frame it is detected
    assert not found[in_frame < 3].any()
    assert set(np.flatnonzero(in_frame == 0)) <= set(detected)  # while away: looked for on every frame
    followed = [t for t in detected if t > 0 and inside[t] and found[t - 1]]  # detections of a followed person
    assert 1 <= len(followed) <= inside.sum() / 10 + 1


def fake_detector_export(folder, preprocess):
    """A PaddleDetection-style export (tools/export_model.py's interface, no weights): inputs image, im_shape,
    scale_factor; outputs N x 6 boxes [class, score, x1, y1, x2, y2] in image pixels and their count. Its boxes
    span x 25-75% and y 10-90% of the network's input, mapped back by scale_factor; the person box scores the
    mean of the normalised red channel, then come a class-1 box and a weak (0.1) person box."""
    class Detector(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.gain = self.create_parameter([1], default_initializer=paddle.nn.initializer.Constant(1.0))

        def forward(self, image, im_shape, scale_factor):
            h, w = im_shape[:, 0], im_shape[:, 1]
            sy, sx = scale_factor[:, 0], scale_factor[:, 1]
            one = paddle.ones([1])
            corners = [0.25 * w / sx, 0.1 * h / sy, 0.75 * w / sx, 0.9 * h / sy]
            rows = [[0 * one, self.gain * image[:, 0].mean().reshape([1])], [one, one], [0 * one, 0.1 * one]]
            boxes = paddle.concat([paddle.concat(row + corners).reshape([1, 6]) for row in rows])
            return boxes, paddle.full([1], 3, "int32")

    spec = paddle.static.InputSpec
    specs = [spec([None, 3, None, None], "float32", "image"), spec([None, 2], "float32", "im_shape"),
             spec([None, 2], "float32", "scale_factor")]
    paddle.jit.save(paddle.jit.to_static(Detector(), input_spec=specs, full_graph=True), str(folder / "model"))
    # the fields and layout yaml.dump gives an exported PP-PicoDet person detector
    (folder / "infer_cfg.yml").write_text(f"""mode: paddle
draw_threshold: 0.5
metric: COCO
use_dynamic_shape: false
arch: GFL
min_subgraph_size: 3
Preprocess:
{preprocess}- type: Permute
label_list:
- person
NMS:
  keep_top_k: 100
  name: MultiClassNMS
  nms_threshold: 0.5
  nms_top_k: 1000
  score_threshold: 0.3
fpn_stride:
- 8
- 16
""")


PICODET_PREPROCESS = """- interp: 2
  keep_ratio: false
  target_size:
  - 320
  - 320
  type: Resize
- is_scale: true
  mean:
  - 0.485
  - 0.456
  - 0.406
  std: [0.229, 0.224, 0.225]
  type: NormalizeImage
"""


def test_paddle_detection_export_runs_as_the_person_detector(tmp_path):
    fake_detector_export(tmp_path, PICODET_PREPROCESS)
    assert (tmp_path / "model.json").exists() and (tmp_path / "model.pdiparams").exists()
    config = pr.read_detector_config(str(tmp_path / "infer_cfg.yml"))
    assert config["Preprocess"][0] == dict(interp=2, keep_ratio=False, target_size=[320, 320], type="Resize")
    assert config["Preprocess"][1]["std"] == [0.229, 0.224, 0.225] and config["label_list"] == ["person"]
    assert config["NMS"]["nms_threshold"] == 0.5 and config["fpn_stride"] == [8, 16]
    image = np.zeros((200, 300, 3), np.uint8)
    image[..., 2] = 200  # red (BGR order): normalised (200 / 255 - 0.485) / 0.229
    [(box, score)] = pr.paddle_detector(str(tmp_path), 0.5, device="cpu")(image)
    assert box == pytest.approx((75, 20, 150, 160), abs=0.01)  # x and y scaled apart: 320x320 from 300x200
    assert score == pytest.approx((200 / 255 - 0.485) / 0.229, abs=1e-3)
    assert len(pr.paddle_detector(str(tmp_path), 0.05, device="cpu")(image)) == 2  # the weak one; never class 1
    keep_ratio = pr.detector_preprocess([dict(type="Resize", target_size=[320, 320], keep_ratio=True, interp=1),
                                         dict(type="Permute"), dict(type="PadStride", stride=32)], "cfg")(image)
    assert keep_ratio["image"].shape == (1, 3, 224, 320)  # 213x320 padded to multiples of 32
    np.testing.assert_allclose(keep_ratio["im_shape"], [[213, 320]])
    np.testing.assert_allclose(keep_ratio["scale_factor"], [[320 / 300, 320 / 300]])
    raises_one_line(ValueError, "Preprocess step LetterBoxResize is not supported", pr.detector_preprocess,
                    [dict(type="LetterBoxResize")], "cfg")
    (tmp_path / "infer_cfg.yml").write_text("Preprocess:\n- type: Permute\nlabel_list:\n- car\n- bus\n")
    raises_one_line(ValueError, "label_list has no person or pedestrian class", pr.paddle_detector, str(tmp_path), 0.5)
    (tmp_path / "infer_cfg.yml").unlink()
    raises_one_line(FileNotFoundError, "no infer_cfg.yml", pr.paddle_detector, str(tmp_path), 0.5)


@pytest.mark.xdist_group("lite_export")
def test_video_json_has_track_ids_and_a_webcam_runs_the_same_loop(lite_export, tmp_path, monkeypatch, capsys):
    video, boxes = tmp_path / "walk.mp4", tmp_path / "boxes.json"
    data.make_synthetic_video(str(video), num_frames=8, num_people=2, size=(160, 120), seed=5, boxes_path=str(boxes))
    detector = tmp_path / "detector"
    detector.mkdir()
    fake_detector_export(detector, PICODET_PREPROCESS)
    runs, real = {}, cv2.VideoCapture
    for name, argv in (("file", ["--input", str(video), "--boxes", str(boxes)]),
                       ("webcam", ["--input", "0", "--boxes", str(boxes)]),
                       ("detector", ["--input", str(video), "--detector", str(detector), "--det-thr", "-9",
                                     "--det-every", "3", "--kpt-thr", "-1"])):
        # webcam 0 is this video file: the same frames through the webcam path
        monkeypatch.setattr(cv2, "VideoCapture", lambda spec: real(str(video) if spec == 0 else spec))
        pr.main(["--model-dir", lite_export[0], "--out", str(tmp_path / name), "--nms-thr", "1"] + argv)
        runs[name] = json.loads((tmp_path / name / "predictions.json").read_text())["results"]
    printed = capsys.readouterr().out
    assert "8 frames in" in printed and "detector on 8 frames" in printed and "detector on 3 frames" in printed
    assert (tmp_path / "file" / "walk.mp4").exists() and (tmp_path / "webcam" / "webcam0.mp4").exists()
    assert runs["file"] == runs["webcam"]
    assert [r["frame"] for r in runs["file"]] == list(range(8))
    for result in runs["file"]:
        assert len(result["people"]) == 2
        for person in result["people"]:
            assert set(person) == {"track_id", "box", "box_score", "score", "keypoints"}
            assert isinstance(person["track_id"], int) and np.array(person["keypoints"]).shape == (17, 3)
    assert {p["track_id"] for r in runs["file"] for p in r["people"]} <= set(range(4))
    # the fake detector's person box twice (its weak copy too, at --det-thr -9), followed between detections
    assert [p["box"] for p in runs["detector"][0]["people"]] == [[40.0, 12.0, 80.0, 96.0]] * 2
    assert all(len(r["people"]) == 2 for r in runs["detector"])


@pytest.mark.xdist_group("lite_export")
def test_video_benchmark_reports_the_pipeline_and_the_network_alone(lite_export, tmp_path, capsys):
    video = tmp_path / "walk.mp4"
    data.make_synthetic_video(str(video), num_frames=6, num_people=1, size=(160, 120), seed=6)
    pr.main(["--model-dir", lite_export[0], "--input", str(video), "--benchmark", "--out", str(tmp_path / "out")])
    first, second = capsys.readouterr().out.strip().splitlines()
    assert first.startswith("benchmark: lite_hrnet_18 128x96") and "walk 6 frames, 1.00 people" in first
    assert "1.00 network calls a frame (1.00 crops a call)" in first
    figures = re.search(r"whole pipeline +(\S+) frames/s \| network alone +(\S+) frames/s \| pipeline = (\S+) x "
                        r"network \| outside the network (\S+) ms a frame", second).groups()
    pipeline, network, ratio, outside = (float(v) for v in figures)
    assert outside >= 0
    assert ratio > 0 and ratio == pytest.approx(pipeline / network, rel=0.05, abs=0.02)
    assert not (tmp_path / "out").exists()  # writes nothing


def test_video_options_bad_input_is_one_line(lite18_weights, tmp_path):
    model = ["--model", "lite_hrnet_18", "--weights", lite18_weights, "--input-size", "128x96", "--out",
             str(tmp_path / "out")]
    video = tmp_path / "clip.mp4"
    data.make_synthetic_video(str(video), num_frames=2, num_people=1, size=(64, 64))
    assert "give a video with --boxes or --detector" in predict_error(model + ["--input", str(video),
                                                                               "--det-every", "5"])
    assert "give a video with --boxes or --detector" in predict_error(model + ["--input", DEMO, "--det-every", "5",
                                                                               "--detector", "hog"])
    assert "no such folder (expected hog or a PaddleDetection export)" in predict_error(
        model + ["--input", str(video), "--detector", str(tmp_path / "nope")])
    with pytest.raises(SystemExit):
        pr.parse_args(["--input", str(video), "--min-cutoff", "0"])


# ---- issue 14: fast CPU deployment: OpenVINO backend (fp32, bf16, int8), evaluate.py --model-dir, auto fallback

def bn_settled_on(model, crops):
    """BatchNorm statistics of exactly these crops (momentum 0), then eval: every layer's output is of order 1 on
    such crops, so the heatmaps have real peaks (with the settled-by-two-steps fixtures they are nearly flat)."""
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            layer._momentum = 0.0
    model.train()
    with paddle.no_grad():
        model(paddle.to_tensor(crops))
    model.eval()
    return model


@pytest.fixture(scope="module")
def family_exports(tmp_path_factory):
    """{name: (eager model, export folder)} for HRNet-W32 and Lite-HRNet-18 at 64x64, BN settled on real crops."""
    crops = ex.real_crops("64x64")
    exports = {}
    for seed, name in enumerate(("hrnet_w32", "lite_hrnet_18")):
        paddle.seed(seed)
        model = bn_settled_on(M.build_model(name), crops)
        folder = str(tmp_path_factory.mktemp("family") / name)
        ex.export_model(model, folder, name, "64x64", COCO_INFO)
        exports[name] = (model, folder)
    return exports


@pytest.mark.xdist_group("family")
@pytest.mark.parametrize("name", ["hrnet_w32", "lite_hrnet_18"])
def test_openvino_runs_both_families_as_eager_mode_does(name, family_exports):
    model, folder = family_exports[name]
    assert ex.read_pose_json(folder)["legacy_model_file"] == "legacy.pdmodel"
    run = ex.create_predictor(folder, device="cpu")  # auto: OpenVINO on CPU when installed
    assert (run.backend, run.precision, run.describe()) == ("openvino", "fp32", "OpenVINO fp32")
    crops = ex.real_crops("64x64")
    for batch in (crops[:1], crops):  # any batch size
        reference = outputs(model, batch)
        # float sums in another order, through 40-100 layers of a random network: 1e-5 of the output is reached
        error = np.abs(run(batch) - reference).max() / np.abs(reference).max()
        assert error < 1e-4


def test_openvino_runs_a_batch_in_chunks_and_another_input_size(tmp_path):
    """Seven crops run as networks compiled for batches of 4, 2 and 1, in order; at 96x64 the cross-resolution
    weighting pools 24x16, 12x8 and 6x4 branches to 3x2 (plain pooling in the legacy program)."""
    crops = ex.real_crops("96x64", count=7)
    paddle.seed(3)
    model = bn_settled_on(M.build_model("lite_hrnet_18"), crops)
    ex.export_model(model, str(tmp_path), "lite_hrnet_18", "96x64", COCO_INFO)
    run = ex.create_predictor(str(tmp_path), backend="openvino", device="cpu")
    reference = outputs(model, crops)
    assert np.abs(run(crops) - reference).max() / np.abs(reference).max() < 1e-4


@pytest.mark.xdist_group("family")
@pytest.mark.parametrize("name", ["hrnet_w32", "lite_hrnet_18"])
def test_bf16_finds_the_keypoints_fp32_finds_on_real_crops(name, family_exports):
    model, folder = family_exports[name]
    if not ex.openvino_has_bf16():
        raises_one_line(ValueError, "this CPU has no bf16 instructions", ex.create_predictor, folder,
                        "openvino", "cpu", precision="bf16")
        return
    crops = ex.real_crops("64x64")
    reference = outputs(model, crops)
    bf16 = ex.create_predictor(folder, "openvino", "cpu", precision="bf16")
    assert bf16.precision == "bf16" and {"bf16"} <= set(ex.openvino_conv_precisions(bf16))
    agreement, compared = ex.keypoint_agreement(reference, bf16(crops))
    assert compared >= 20 and agreement >= 0.9, (agreement, compared)
    assert ex.keypoint_agreement(reference, reference) == (1.0, compared)
    shuffled = np.roll(reference, 7, axis=3)  # the agreement measure tells other heatmaps apart
    assert ex.keypoint_agreement(reference, shuffled)[0] < 0.5


def evaluated_ap(argv, capsys):
    capsys.readouterr()
    ev.main(argv)
    printed = capsys.readouterr().out.strip().splitlines()
    return float(printed[-1][4:]), printed[0]


@pytest.mark.xdist_group("qat")
def test_evaluate_scores_an_export_as_it_scores_the_checkpoint(qat_run, synthetic_root, tmp_path, capsys):
    out = str(tmp_path / "float")
    ex.main(["--model", "lite_hrnet_18", "--weights", qat_run["float"], "--input-size", "64x64", "--out", out])
    printed = capsys.readouterr().out
    assert "OpenVINO (CPU) vs eager on a random batch" in printed
    common = ["--data", synthetic_root, "--workers", "0", "--no-flip", "--device", "cpu"]
    checkpoint, _ = evaluated_ap(common + ["--model", "lite_hrnet_18", "--weights", qat_run["float"], "--input-size",
                                           "64x64", "--out", str(tmp_path / "checkpoint.json")], capsys)
    expected = json.loads((tmp_path / "checkpoint.json").read_text())
    for backend, what in (("paddle", "paddle.inference fp32"), ("auto", "OpenVINO fp32")):
        results = str(tmp_path / f"{backend}.json")
        exported, first_line = evaluated_ap(common + ["--model-dir", out, "--backend", backend, "--out", results],
                                            capsys)
        assert f"lite_hrnet_18 ({what}) on " in first_line and "input 64x64" in first_line
        assert abs(exported - checkpoint) <= 1e-3, (backend, exported, checkpoint)
        got = json.loads(open(results).read())
        assert len(got) == len(expected)
        same = [np.abs(np.subtract(a["keypoints"], b["keypoints"])).max() < 0.01 for a, b in zip(got, expected)]
        assert np.mean(same) >= 0.9  # the same people found; a rare near-tie of two heatmap pixels may flip
    if ex.openvino_has_bf16():
        assert "(OpenVINO bf16)" in evaluated_ap(common + ["--model-dir", out, "--precision", "bf16"], capsys)[1]
    assert "--model-dir and --weights are alternatives" in cli_error(
        common + ["--model-dir", out, "--model", "lite_hrnet_18", "--weights", qat_run["float"]])
    assert "the model in" in cli_error(common + ["--model-dir", out, "--input-size", "128x96"])
    assert "float export; int8 needs a quantized one" in cli_error(common + ["--model-dir", out, "--precision", "int8"])


@pytest.mark.xdist_group("qat")
def test_int8_export_runs_every_convolution_in_int8_on_openvino(qat_run, synthetic_root, capsys):
    run = ex.create_predictor(qat_run["export"], device="cpu", precision="int8")  # auto backend: OpenVINO
    assert (run.backend, run.precision) == ("openvino", "int8")
    precisions = ex.openvino_conv_precisions(run)
    assert sum(precisions.get(kind, 0) for kind in INT8_CONVS) == sum(precisions.values()) == 301
    qat_ap = float(re.search(r"QAT \(fake-quant\) (\S+)", qat_run["log"]).group(1))
    int8_ap, first_line = evaluated_ap(["--data", synthetic_root, "--workers", "0", "--no-flip", "--device", "cpu",
                                        "--model-dir", qat_run["export"], "--precision", "int8"], capsys)
    assert "(OpenVINO int8)" in first_line and int8_ap >= qat_ap - 0.01, (int8_ap, qat_ap)


def current_signal_stack():
    """(address, size, mapped): this thread's alternate signal stack and whether its memory is mapped."""
    stack = ex.SignalStack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
    address = stack.ss_sp or 0
    with open("/proc/self/maps") as maps:
        spans = [[int(end, 16) for end in line.split()[0].split("-")] for line in maps]
    return address, stack.ss_size, any(low <= address and address + stack.ss_size <= high for low, high in spans)


@pytest.mark.xdist_group("lite_export")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack and /proc are Linux's")
def test_compiled_models_freed_in_any_order_leave_a_valid_signal_stack(lite_export):
    """OpenVINO's CPU plugin puts back, when a compiled model is freed, the signal stack that was there at its
    compile, even one another model has since unmapped; a signal handled on it kills the process. Two
    predictors freed in the order they were made (not the reverse) must leave the process's own stack."""
    first = ex.create_predictor(lite_export[0], "openvino", "cpu")
    second = ex.create_predictor(lite_export[0], "openvino", "cpu")
    del first, second
    gc.collect()
    address, size, mapped = current_signal_stack()
    assert mapped and (address, size) == (ctypes.addressof(ex.PROCESS_SIGNAL_STACK[0]), ex.SIGNAL_STACK_BYTES)


@pytest.mark.xdist_group("lite_export")
def test_without_openvino_everything_runs_on_paddle_inference(lite_export, lite18_weights, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    run = ex.create_predictor(lite_export[0], device="cpu")
    assert (run.backend, run.precision) == ("paddle", "fp32")
    raises_one_line(ValueError, r"OpenVINO is not installed \(pip install openvino\)", ex.create_predictor,
                    lite_export[0], "openvino", "cpu")
    raises_one_line(ValueError, "bf16 runs on OpenVINO", ex.create_predictor, lite_export[0], device="cpu",
                    precision="bf16")
    logs = []
    ex.check_backends(M.load_weights(M.build_model("lite_hrnet_18"), lite18_weights), lite_export[0], log=logs.append)
    assert "legacy.pdmodel (for OpenVINO) not checked: OpenVINO is not installed" in logs[0]
    assert len(logs) == 2 and logs[1].startswith("paddle.inference (CPU, oneDNN) vs eager")


@pytest.mark.xdist_group("lite_export")
def test_predict_benchmark_compares_runtimes_in_one_loop(lite_export, capsys):
    pr.main(["--model-dir", lite_export[0], "--input", DEMO, "--benchmark", "--benchmark-runs", "1",
             "--compare", lite_export[0], "--compare-backend", "paddle"])
    printed = capsys.readouterr().out
    assert "lite_hrnet_18 128x96, OpenVINO fp32," in printed.splitlines()[0]
    assert re.search(r"batch 1:  --compare \S+ \(paddle.inference fp32\) model p50 .* this model is \S+x as fast",
                     printed)
    with pytest.raises(SystemExit):
        pr.main(["--model-dir", lite_export[0], "--input", DEMO, "--benchmark", "--compare-backend", "paddle"])
    assert capsys.readouterr().err.strip().endswith("--compare-backend and --compare-precision go with --compare")


# OpenVINO's int8 convolutions where the CPU sums int8 products exactly (VNNI); elsewhere the int8 program's
# rounding runs in float arithmetic and the convolutions in f32 (export.cpu_sums_int8_exactly)
INT8_CONVS = {"i8", "u8"} if ex.cpu_sums_int8_exactly() else {"f32"}


@pytest.mark.parametrize("vnni", [True, False])
def test_openvino_int8_computes_what_the_fake_quant_model_computes(vnni, tmp_path, monkeypatch):
    """A small QAT network (signed and ReLU inputs, a dense, a depthwise and a 1x1 convolution): OpenVINO gives
    the fake-quantized model's outputs, unlike oneDNN (one scale per tensor): with VNNI in int8 kernels (integer
    sums are exact; checked where the CPU has it), without it (AVX2 kernels would saturate) in float arithmetic."""
    if vnni and not ex.cpu_sums_int8_exactly():
        pytest.skip("this CPU has no VNNI: OpenVINO's int8 convolutions are not run here")
    monkeypatch.setattr(ex, "cpu_sums_int8_exactly", lambda: vnni)
    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 16, 3, stride=4, padding=1), paddle.nn.BatchNorm2D(16),
                               paddle.nn.ReLU(), paddle.nn.Conv2D(16, 16, 3, padding=1, groups=16),
                               paddle.nn.BatchNorm2D(16), paddle.nn.Conv2D(16, 17, 1))
    crops = ex.real_crops("64x64")
    M.prepare_qat(bn_settled_on(net, crops), pact=False, moving_rate=0.0)
    net.train()
    with paddle.no_grad():  # every quantizer's scale: the largest |input| of these crops (none is clipped, see
        net(paddle.to_tensor(crops))  # export.openvino_int8_graph on the one step below -scale)
    net.eval()
    Q.export_int8(net, str(tmp_path), "tiny", (64, 64), COCO_INFO)
    notes = []
    run = ex.create_predictor(str(tmp_path), device="cpu", precision="int8", log=notes.append)
    assert run.describe() == "OpenVINO int8"
    assert set(ex.openvino_conv_precisions(run)) <= ({"i8", "u8"} if vnni else {"f32"})
    assert len(notes) == (not vnni) and all("this CPU has no VNNI instructions" in note for note in notes)
    expected = outputs(net, crops)
    assert np.abs(run(crops) - expected).max() < 1e-4 * np.abs(expected).max()


# ---- issue 19: files never run code: loading checkpoints, URLs and configs safely

import builtins  # noqa: E402
import collections  # noqa: E402
import pickle  # noqa: E402


class Command:
    """A pickled call of function(*args): what a hostile file asks the unpickler to run."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def hostile_files(folder):
    """{gadget: (path, what the refusal names)}: each file, if opened with plain pickle, creates folder/ran.
    'import' names a function in a module planted on the path, whose import alone creates the marker."""
    marker = str(folder / "ran")
    (folder / "planted.py").write_text(f"open({marker!r}, 'w').close()\ndef run(): pass\n")
    system = Command(os.system, f"touch {marker}")
    gadgets = {
        "os.system": ({"model": system}, f"{os.system.__module__}.system", 2),
        "builtins.exec": ({"model": Command(builtins.exec, f"open({marker!r}, 'w').close()")}, "builtins.exec", 4),
        "import": (None, "planted.run", 2),
        # an allowed call (OrderedDict) whose argument hides the hostile one, inside a plausible checkpoint
        "nested __reduce__": ({"model": Command(collections.OrderedDict, [("w", system)]), "record": {}},
                              f"{os.system.__module__}.system", 4),
        # paddle.save's own eval('data', {'data': array}) is read; eval of anything else is not
        "eval of code": ({"model": Command(builtins.eval, f"open({marker!r}, 'w').close()", {})},
                         "builtins.eval on code of its own", 3),
    }
    files = {}
    for name, (obj, refused, protocol) in gadgets.items():
        path = folder / f"evil_{name.split()[0].replace('.', '_')}.pdparams"
        path.write_bytes(b"\x80\x02cplanted\nrun\n)R." if obj is None else pickle.dumps(obj, protocol=protocol))
        files[name] = (str(path), refused)
    return files


def refusal(source, refused):
    return f"{source}: refused: the file asks to call {refused}; only weights and training state are read"


def test_hostile_pickles_do_run_under_paddle_load(tmp_path, monkeypatch):
    """The threat is real: paddle.load runs every gadget below (so the refusals tested after it mean something)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, (path, _) in hostile_files(tmp_path).items():
        try:
            paddle.load(path, return_numpy=True)
        except Exception:
            pass  # whatever paddle.load makes of the result, the gadget ran while it was read
        assert (tmp_path / "ran").exists(), name
        os.remove(tmp_path / "ran")
        sys.modules.pop("planted", None)


def test_hostile_pickles_are_refused_by_every_reader_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    target = M.build_model("lite_hrnet_18")
    readers = [lambda path: M.read_paddle_file(path, f"--weights {path}"),
               lambda path: M.read_checkpoint(path, "--weights"),
               lambda path: M.load_weights(target, path, flag="--weights"),
               lambda path: M.load_checkpoint(path, "lite_hrnet_18", flag="--weights"),
               lambda path: T.load_training_checkpoint(path)]
    for name, (path, refused) in hostile_files(tmp_path).items():
        for i, read in enumerate(readers):
            flag = "--resume" if i == len(readers) - 1 else "--weights"
            with pytest.raises(M.RefusedFile) as caught:
                read(path)
            assert str(caught.value) == refusal(f"{flag} {path}", refused), name
            assert not (tmp_path / "ran").exists() and "planted" not in sys.modules, name


def settings_for_entry_point(entry, evil, tmp_path):
    """The command line of one entry point that reads evil (a path or URL); the flag named in its error."""
    data = os.path.join(ASSETS, "coco_tiny")
    return {
        "evaluate.py --weights": (["evaluate.py", "--weights", evil, "--data", data], "--weights"),
        "predict.py --weights": (["predict.py", "--weights", evil, "--input", os.path.join(ASSETS, "photos",
                                 "hrnet_demo.jpg"), "--out", str(tmp_path / "out")], "--weights"),
        "train.py --weights": (["train.py", "--weights", evil, "--data", data], "--weights"),
        "train.py --resume": (["train.py", "--resume", evil, "--data", data], "--resume"),
        "distill.py --teacher": (["distill.py", "--teacher", evil, "--data", data], "--teacher"),
        "model.py --convert": (["model.py", "--convert", evil, str(tmp_path / "out.pdparams")], "--convert"),
        "quantize.py --qat-weights": (["quantize.py", "--qat-weights", evil, "--data", data], "--qat-weights"),
        "evaluate.py --weights URL": (["evaluate.py", "--weights", evil, "--data", data], "--weights"),
    }[entry]


ENTRY_POINTS = ["evaluate.py --weights", "predict.py --weights", "train.py --weights", "train.py --resume",
                "distill.py --teacher", "model.py --convert", "quantize.py --qat-weights", "evaluate.py --weights URL"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_hostile_checkpoints_are_refused_by_every_script_with_one_line(entry, tmp_path):
    """Through the real command line, one gadget per entry point in turn (all of them meet every reader in the
    test above): rc != 0, one error line naming the file and what it asked for, no traceback, nothing ran."""
    files = hostile_files(tmp_path)
    name = list(files)[ENTRY_POINTS.index(entry) % len(files)]
    path, refused = files[name]
    env = dict(os.environ, PYTHONPATH=str(tmp_path), HRNET_PADDLE_CACHE=str(tmp_path / "cache"))
    server = None
    if entry.endswith("URL"):
        server = FileServer({"/evil.pdparams": open(path, "rb").read()})
        evil = server.url + "/evil.pdparams"
    else:
        evil = path
    args, flag = settings_for_entry_point(entry, evil, tmp_path)
    r = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=900, env=env)
    if server:
        server.shutdown()
        path = os.path.join(tmp_path, "cache", os.listdir(tmp_path / "cache")[0], "evil.pdparams")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert errors == ["error: " + refusal(f"{flag} {path}", refused)], (name, r.stderr[-2000:])
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out.pdparams").exists()


def deep_equal(a, b, where="file"):
    """The same nested structure, types, names of tensors (other than Paddle's generated ones) and values."""
    if isinstance(a, paddle.Tensor):
        assert isinstance(b, paddle.Tensor) and a.dtype == b.dtype, where
        assert a.name == b.name or a.name.startswith("generated") and b.name.startswith("generated"), where
        assert np.array_equal(a.numpy(), b.numpy()), where
        return
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            deep_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            deep_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), where
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def genuine_files(tmp_path_factory):
    """Files as Paddle and PaddleDetection write them: {name: path}."""
    folder = tmp_path_factory.mktemp("genuine")
    paddle.seed(0)
    model = M.build_model("lite_hrnet_18")
    schedule = paddle.optimizer.lr.PiecewiseDecay([1, 2], [1e-3, 1e-4, 1e-5])
    optimizer = paddle.optimizer.Adam(schedule, parameters=model.parameters())
    model(paddle.randn([2, 3, 64, 64])).mean().backward()
    optimizer.step()
    schedule.step()
    files = {}

    def save(name, obj, **kwargs):
        files[name] = str(folder / name)
        paddle.save(obj, files[name], **kwargs)

    info = data.keypoint_info_from_category(data.COCO_PERSON_CATEGORY)
    record = M.model_record("lite_hrnet_18", (64, 64), info)
    for protocol in (2, 3, 4):  # 2: Paddle 2.0's default (bytes as _codecs.encode); 4: 2.1 onwards
        save(f"state_p{protocol}.pdparams", model.state_dict(), protocol=protocol)
        save(f"last_p{protocol}.pdparams", dict(model=model.state_dict(), record=record,
                                                optimizer=optimizer.state_dict(), epoch=1, step=3,
                                                best_ap=np.float64(0.25), args={"lr": 1e-3, "udp": None}),
             protocol=protocol)
    files["best.pdparams"] = str(folder / "best.pdparams")
    M.save_checkpoint(dict(model=model.state_dict(), record=record), files["best.pdparams"])
    save("paddledetection.pdparams", {M.paddledetection_key(k): v for k, v in model.state_dict().items()})
    save("paddledetection.pdopt", dict(optimizer.state_dict(), last_epoch=1))
    qat = M.build_model("lite_hrnet_18")
    M.prepare_qat(qat, pact=True)
    save("qat.pdparams", dict(model=qat.state_dict(), record=dict(record, qat=True)))
    # written by hand as Paddle writes them: a static-graph tensor (eval('data', ...)), numpy 1.x's module
    # path, and an array over 1 GB split by protocols 2-3 (here a small one, in the same layout)
    weight = np.arange(10, dtype=np.float32).reshape(2, 5)
    for protocol in (2, 4):
        files[f"static_p{protocol}.pdparams"] = str(folder / f"static_p{protocol}.pdparams")
        with open(files[f"static_p{protocol}.pdparams"], "wb") as f:
            pickle.dump({"a": {"fc_0.w_0": Command(builtins.eval, "data", {"data": weight})}, "epoch": 1}, f,
                        protocol=protocol)
    files["numpy1.pdparams"] = str(folder / "numpy1.pdparams")
    with open(files["state_p2.pdparams"], "rb") as f:
        raw = f.read()
    assert b"numpy._core.multiarray" in raw
    (folder / "numpy1.pdparams").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    files["split.pdparams"] = str(folder / "split.pdparams")
    with open(files["split.pdparams"], "wb") as f:
        pickle.dump({"w@@.0": weight.ravel()[:6], "w@@.1": weight.ravel()[6:], "b": np.ones(3, np.float32),
                     "UnpackBigParamInfor@@": {"w": {"OriginShape": (2, 5), "slices": ["w@@.0", "w@@.1"]}},
                     "StructuredToParameterName@@": {"w": "fc_0.w_0", "b": "fc_0.b_0"}}, f, protocol=2)
    return files


def test_genuine_paddle_files_read_exactly_as_paddle_load_reads_them(genuine_files):
    for name, path in genuine_files.items():
        for return_numpy in (True, False):
            deep_equal(M.read_paddle_file(path, return_numpy=return_numpy),
                       paddle.load(path, return_numpy=return_numpy), f"{name} return_numpy={return_numpy}")


def test_genuine_checkpoints_load_and_resume_as_before(genuine_files):
    files = genuine_files
    reference = M.build_model("lite_hrnet_18")
    reference.set_state_dict(paddle.load(files["state_p4.pdparams"]))
    expected = {k: v.numpy() for k, v in reference.state_dict().items()}
    for name in ("state_p2.pdparams", "state_p3.pdparams", "numpy1.pdparams", "last_p2.pdparams", "last_p4.pdparams",
                 "best.pdparams", "paddledetection.pdparams"):
        state, _ = M.convert_state_dict(M.read_checkpoint(files[name])[0], reference)
        assert state.keys() == expected.keys() and all(np.array_equal(state[k], expected[k]) for k in expected), name
    model = M.load_weights(M.build_model("lite_hrnet_18"), files["paddledetection.pdparams"])
    x = np.random.RandomState(0).randn(1, 3, 64, 64).astype("float32")
    np.testing.assert_array_equal(outputs(model.eval(), x), outputs(reference.eval(), x))
    qat, record = M.load_checkpoint(files["qat.pdparams"])
    assert record["qat"] and M.is_qat_model(qat)
    saved = paddle.load(files["last_p4.pdparams"])
    deep_equal(T.load_training_checkpoint(files["last_p4.pdparams"]), saved)
    optimizer = paddle.optimizer.Adam(paddle.optimizer.lr.PiecewiseDecay([1, 2], [1e-3, 1e-4, 1e-5]),
                                      parameters=model.parameters())
    assert T.resume(files["last_p4.pdparams"], model, optimizer, "lite_hrnet_18",
                    data.keypoint_info_from_category(data.COCO_PERSON_CATEGORY), log=lambda *a: None) == (1, 3, 0.25)
    assert optimizer.state_dict()["LR_Scheduler"] == saved["optimizer"]["LR_Scheduler"] == dict(last_epoch=1,
                                                                                             last_lr=1e-4)


def test_url_pins_its_sha256_and_the_first_download_prints_it(tmp_path, capsys):
    body = b"weights" * 100
    digest = hashlib.sha256(body).hexdigest()
    server = FileServer({"/w/model.pdparams": body})
    url, cache = server.url + "/w/model.pdparams", str(tmp_path / "cache")
    first = data.resolve_path_or_url(url, cache_dir=cache, what="--weights")
    assert f"sha256 {digest}; pin it as {url}#sha256={digest}" in capsys.readouterr().err
    assert data.resolve_path_or_url(f"{url}#sha256={digest.upper()}", cache_dir=cache) == first
    assert len(server.requests) == 1  # the pinned URL is the same cached file, checked, not fetched again
    wrong = "0" * 64
    raises_one_line(ValueError, f"--weights {url}#sha256={wrong}: .*SHA256 {digest} does not match the expected "
                    f"{wrong}; the download .* was deleted", data.resolve_path_or_url, f"{url}#sha256={wrong}",
                    cache_dir=cache, what="--weights")
    assert len(server.requests) == 2 and not os.path.exists(first) and not os.path.exists(first + ".part")
    assert data.resolve_path_or_url(f"{url}#sha256={digest}", cache_dir=cache) == first
    assert open(first, "rb").read() == body and "pin it" not in capsys.readouterr().err
    raises_one_line(ValueError, "only URL fragment read is #sha256=", data.resolve_path_or_url, f"{url}#md5=00",
                    what="--weights")
    server.shutdown()


def test_infer_cfg_yml_builds_no_python_objects(tmp_path):
    config = tmp_path / "infer_cfg.yml"
    config.write_text(f"Preprocess: !!python/object/apply:os.system ['touch {tmp_path / 'ran'}']\n")
    raises_one_line(ValueError, "infer_cfg.yml: not the YAML PaddleDetection writes .*python/object/apply:os.system",
                    pr.read_detector_config, str(config))
    assert not (tmp_path / "ran").exists()
    config.write_text("- just\n- a list\n")
    raises_one_line(ValueError, "a mapping of settings", pr.read_detector_config, str(config))


def test_unreadable_files_are_one_line_errors(genuine_files, tmp_path):
    cut = tmp_path / "cut.pdparams"
    cut.write_bytes(open(genuine_files["best.pdparams"], "rb").read()[:5000])
    (tmp_path / "text.pdparams").write_text("not a checkpoint\n")
    for path in (str(cut), str(tmp_path / "text.pdparams")):
        raises_one_line(ValueError, f"--weights {re.escape(path)}: not a readable Paddle checkpoint",
                        M.read_checkpoint, path, "--weights")
        raises_one_line(ValueError, f"--resume {re.escape(path)}: not a readable Paddle checkpoint",
                        T.load_training_checkpoint, path)


# ---- issue 22: COCO scale: samples held as numpy columns that forked DataLoader workers share

def official_center_scale(x, y, w, h, aspect_ratio=0.75):
    """HRNet's COCODataset._xywh2cs, in plain Python floats, for one box."""
    center = np.array([x + w * 0.5, y + h * 0.5], np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w / 200, h / 200], np.float32) * 1.25


def expected_gt_samples(ann_file, image_dir):
    """Training samples straight from the JSON as the official loader makes them: images in file order, each with
    its non-crowd annotations that have a keypoint and a box valid after clipping to the image (the clipped box
    loses 1 px), visibility capped at 1."""
    coco = json.load(open(ann_file))
    samples = []
    for image in coco["images"]:
        for ann in coco["annotations"]:
            if ann["image_id"] != image["id"] or ann["iscrowd"] or max(ann["keypoints"]) == 0:
                continue
            x, y, w, h = ann["bbox"]
            x1, y1 = max(0, x), max(0, y)
            x2, y2 = min(image["width"] - 1, x1 + max(0, w - 1)), min(image["height"] - 1, y1 + max(0, h - 1))
            if ann["area"] <= 0 or x2 < x1 or y2 < y1:
                continue
            joints = np.array(ann["keypoints"], np.float32).reshape(-1, 3)
            joints[:, 2] = joints[:, 2] > 0
            center, scale = official_center_scale(x1, y1, x2 - x1, y2 - y1)
            samples.append(dict(image_id=image["id"], image_file=os.path.join(image_dir, image["file_name"]),
                                center=center, scale=scale, score=1.0, joints=joints, area=ann["area"]))
    return samples


def assert_samples_equal(dataset, expected):
    assert len(dataset) == len(expected)
    for i, want in enumerate(expected):
        got = dataset.record(i)
        assert set(got) == set(want)
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                assert got[key].dtype == value.dtype
                np.testing.assert_array_equal(got[key], value, err_msg=f"sample {i} {key}")
            else:
                assert got[key] == value and type(got[key]) is type(value), (i, key, got[key], value)


def test_gt_samples_are_the_official_ones():
    for ann, images in ((MINI_ANN, MINI_IMAGES), (TINY_ANN, TINY_IMAGES)):
        assert_samples_equal(data.COCOKeypointDataset(ann, images, "256x192", train=True),
                             expected_gt_samples(ann, images))


def test_detection_samples_are_the_file_boxes():
    coco, dets = json.load(open(TINY_ANN)), json.load(open(TINY_DETS))
    files = {image["id"]: os.path.join(TINY_IMAGES, image["file_name"]) for image in coco["images"]}
    expected = []
    for det in dets:
        x, y, w, h = det["bbox"]
        if det["category_id"] == 1 and det["score"] >= 0.3 and w >= 1 and h >= 1:
            center, scale = official_center_scale(x, y, w, h)
            expected.append(dict(image_id=det["image_id"], image_file=files[det["image_id"]], center=center,
                                 scale=scale, score=det["score"], joints=np.zeros((17, 3), np.float32), area=w * h))
    assert len(expected) > 10
    assert_samples_equal(data.COCOKeypointDataset(TINY_ANN, TINY_IMAGES, "256x192", train=False, boxes=TINY_DETS,
                                                  det_score_thr=0.3), expected)


def getitem_digests(dataset, epochs):
    crops, targets = hashlib.sha256(), hashlib.sha256()
    for epoch in epochs:
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            image, target, weight, index = dataset[i]
            crops.update(image.tobytes())
            for array in (target, weight, index):
                targets.update(array.tobytes())
    return crops.hexdigest()[:16], targets.hexdigest()[:16]


def test_samples_are_bit_identical_to_those_of_the_list_of_dicts_dataset():
    """Digests of every __getitem__ output (the crops; the targets, weights and indices) recorded with the previous
    implementation (a list of one dict per sample, commit 40dbe5e) on assets/: the storage changed, the samples must
    not. Regression values of this environment (numpy 2.3.5, OpenCV 4.14 on x86-64): another numpy or OpenCV
    build may round an exp or a warp differently, and then these need recording again with the old code."""
    mini, tiny = (MINI_ANN, MINI_IMAGES), (TINY_ANN, TINY_IMAGES)
    cases = [
        (data.COCOKeypointDataset(*mini, "256x192", train=True, seed=1, **data.augmentation_defaults("hrnet_w32")),
         (0, 3), ("eef61c047d790f76", "e8c4302ce4236d84")),
        (data.COCOKeypointDataset(*mini, "128x96", train=True, udp=True, seed=2,
                                  **data.augmentation_defaults("lite_hrnet_18")), (1,),
         ("08e22babfd04fcec", "0de1cb9828bec80e")),
        (data.COCOKeypointDataset(*tiny, "256x192", train=False, boxes=TINY_DETS), (0,),
         ("d829402e992a9d99", "198bfb813e0c3a7d")),
    ]
    for dataset, epochs, digests in cases:
        assert getitem_digests(dataset, epochs) == digests


def test_samples_are_numpy_columns_not_python_objects_per_sample():
    dataset = data.COCOKeypointDataset(MINI_ANN, MINI_IMAGES, "256x192", train=True)
    n = len(dataset)
    for value in vars(dataset).values():  # a list or dict per sample is what forked workers end up copying
        assert not (isinstance(value, (list, tuple, dict)) and len(value) >= n)
    columns = (dataset.image_ids, dataset.image_index, dataset.centers, dataset.scales, dataset.joints,
               dataset.scores, dataset.areas)
    assert all(c.dtype != object and len(c) == n for c in columns)
    assert dataset.image_file(5) == dataset.record(5)["image_file"] == dataset.image_files[int(dataset.image_index[5])]
    assert os.path.isfile(dataset.image_file(5)) and dataset.image_file(5).startswith(MINI_IMAGES)
    record = dataset.record(0)
    record["center"][:] = 0  # a copy: the dataset keeps its own
    assert dataset.centers[0].any()


def test_packed_strings_give_back_every_string():
    strings = ["a.jpg", "", "dir/ünïcode.png", "x" * 300, "\ud800odd"]
    packed = data.PackedStrings(strings)
    assert len(packed) == len(strings) and [packed[i] for i in range(len(strings))] == strings
    assert isinstance(packed.buffer, np.ndarray) and packed.buffer.dtype == np.uint8


def test_load_json_drops_keys_at_every_depth(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"segmentation": 1, "annotations": [{"id": 1, "segmentation": [[1, 2]]}], "x": [1]}))
    assert data.load_json(str(path), "file", drop_keys=("segmentation",)) == {"annotations": [{"id": 1}], "x": [1]}
    assert data.load_json(str(path), "file")["annotations"][0]["segmentation"] == [[1, 2]]


def test_coco_scale_file_repeats_the_assets_people(tmp_path):
    data.make_coco_scale_file(str(tmp_path), num_images=60, num_instances=200)
    ann, images = str(tmp_path / "annotations" / "person_keypoints_train2017.json"), str(tmp_path / "train2017")
    coco = json.load(open(ann))
    assert len(coco["images"]) == 60 and len(coco["annotations"]) == 200
    assert len({image["id"] for image in coco["images"]}) == 60 and "segmentation" in coco["annotations"][0]
    dataset = data.COCOKeypointDataset(ann, images, "256x192", train=True)
    assert_samples_equal(dataset, expected_gt_samples(ann, images))
    assert len({dataset.joints[i].tobytes() for i in range(len(dataset))}) == 74 + 12  # each usable person of assets/


def test_scale_bench_reports_build_and_worker_memory(tmp_path, capsys):
    data.make_coco_scale_file(str(tmp_path), num_images=30, num_instances=100)
    data.main(["scale-bench", "--out", str(tmp_path), "--input-size", "64x64", "--workers", "1", "--batch-size", "2",
               "--steps", "12"])
    printed = capsys.readouterr().out
    assert re.search(r"built 100 samples in \S+s \(\S+s CPU\); main process resident \d+ MB before, "
                     r"peak \d+ MB", printed)
    assert len(re.findall(r"worker \d+: private dirty memory \S+ MB at step 10, \S+ MB at step 11", printed)) == 1
    with pytest.raises(SystemExit, match="--steps 5: expected at least 12"):
        data.main(["scale-bench", "--out", str(tmp_path), "--steps", "5"])


# ---- issue 18: your own keypoints: fine-tuning that carries joints by name
ARM4 = ["left_elbow", "right_elbow", "left_wrist", "right_wrist"]


@pytest.fixture(scope="module")
def coco17_checkpoint(tmp_path_factory):
    """A random lite_hrnet_18 (settled BatchNorm) saved with its record: COCO's 17 joints at 128x96."""
    paddle.seed(2)
    model = settle_batch_norm(M.build_model("lite_hrnet_18"), (2, 3, 128, 96))
    path = str(tmp_path_factory.mktemp("coco17") / "best.pdparams")
    M.save_checkpoint(dict(model=model.state_dict(), record=M.model_record("lite_hrnet_18", (96, 128), COCO_INFO)),
                      path)
    return path, model


@pytest.fixture(scope="module")
def arm4(synthetic_root, tmp_path_factory):
    """data.py subset: the synthetic set's elbows and wrists (COCO names), and the same joints renamed p1..p4."""
    root = tmp_path_factory.mktemp("arm4")
    data.main(["subset", "--data", synthetic_root, "--keypoints", ",".join(ARM4), "--max-images", "10",
               "--out", str(root / "named")])
    data.main(["subset", "--data", synthetic_root, "--keypoints", ",".join(ARM4), "--max-images", "10",
               "--rename", "p1,p2,p3,p4", "--out", str(root / "unknown")])
    return str(root / "named"), str(root / "unknown")


def test_canonical_joint_names_read_every_naming_style_alike():
    names = ["left_wrist", "l_wrist", "LeftWrist", "Left-wrist", "wrist_l", "Left Wrist", "LWrist"]
    assert data.canonical_joint_names(names) == ["left_wrist"] * 7
    assert data.canonical_joint_names(["head", "HeadTop", "p1", "lwrist", "rwrist"]) == \
        ["head_top", "head_top", "p1", "left_wrist", "right_wrist"]
    assert data.canonical_joint_names(["lwrist"]) == ["lwrist"]  # a glued l/r is a side only with its counterpart


def test_data_subset_keeps_named_joints_their_limbs_and_the_whole_val_set(synthetic_root, arm4):
    named, unknown = arm4
    for split, max_images in (("train2017", 10), ("val2017", None)):
        src = json.load(open(os.path.join(synthetic_root, "annotations", f"person_keypoints_{split}.json")))
        out = json.load(open(os.path.join(named, "annotations", f"person_keypoints_{split}.json")))
        category = out["categories"][0]
        assert category["keypoints"] == ARM4 and category["skeleton"] == [[1, 3], [2, 4]]  # COCO's 8-10, 9-11
        assert len(out["images"]) == (max_images or len(src["images"]))
        kept = {image["id"] for image in out["images"]}
        by_id = {ann["id"]: ann for ann in src["annotations"]}
        assert len(out["annotations"]) == sum(ann["image_id"] in kept for ann in src["annotations"])
        for ann in out["annotations"]:
            joints = np.array(by_id[ann["id"]]["keypoints"]).reshape(17, 3)[[7, 8, 9, 10]]
            assert ann["keypoints"] == joints.ravel().tolist()
            assert ann["num_keypoints"] == int((joints[:, 2] > 0).sum())
        assert all(os.path.isfile(os.path.join(named, split, image["file_name"])) for image in out["images"])
    category = json.load(open(os.path.join(unknown, "annotations", "person_keypoints_val2017.json")))["categories"][0]
    assert category["keypoints"] == ["p1", "p2", "p3", "p4"]
    with pytest.raises(SystemExit, match="--keypoints left_thumb: not a keypoint of .*nose, left_eye"):
        data.main(["subset", "--data", synthetic_root, "--keypoints", "left_thumb", "--out", str(named) + "x"])
    with pytest.raises(SystemExit, match="--max-images 0: expected 1 or more"):
        data.main(["subset", "--data", synthetic_root, "--keypoints", "nose", "--max-images", "0", "--out", "x"])


def test_carried_rows_are_the_source_rows_in_the_targets_order_and_new_rows_a_fresh_heads(coco17_checkpoint):
    path, source = coco17_checkpoint
    names = ["RightWrist", "neck", "l_elbow", "head", "left_wrist"]  # COCO 10, new, 7, new, 9
    paddle.seed(7)
    fresh = M.build_model("lite_hrnet_18", len(names)).keypoint_head.final_layer
    paddle.seed(7)
    lines = []
    model = M.load_weights(M.build_model("lite_hrnet_18", len(names)), path, log=lines.append,
                           keypoint_names=names, flag="--weights")
    layer, source_layer = model.keypoint_head.final_layer, source.keypoint_head.final_layer
    for target, row in ((0, 10), (2, 7), (4, 9)):
        np.testing.assert_array_equal(layer.weight.numpy()[target], source_layer.weight.numpy()[row])
        np.testing.assert_array_equal(layer.bias.numpy()[target], source_layer.bias.numpy()[row])
    for target in (1, 3):  # build_model's init_weights: N(0, 0.001), zero bias
        np.testing.assert_array_equal(layer.weight.numpy()[target], fresh.weight.numpy()[target])
        assert layer.bias.numpy()[target] == 0
    new_rows = layer.weight.numpy()[[1, 3]]
    assert abs(new_rows.std() - 0.001) < 0.0002 and abs(new_rows.mean()) < 0.0002
    for key, value in source.backbone.state_dict().items():
        np.testing.assert_array_equal(model.backbone.state_dict()[key].numpy(), value.numpy())
    assert lines == [f"--weights {path}: every layer but the final one loaded; final layer: 3 of 5 joints carried "
                     f"by name (RightWrist, l_elbow, left_wrist), 2 new (neck, head)"]
    lines.clear()  # the same keypoint set: loaded as it is, nothing to say
    M.load_weights(M.build_model("lite_hrnet_18"), path, log=lines.append, keypoint_names=COCO_INFO.names)
    assert lines == []


def test_a_file_without_record_has_cocos_names_or_the_models_and_another_network_is_an_error(lite18_weights):
    lines = []
    model = M.load_weights(M.build_model("lite_hrnet_18", 2), lite18_weights, log=lines.append,
                           keypoint_names=["right_eye", "nose"], flag="--weights")
    source = paddle.load(lite18_weights)["keypoint_head.final_layer.weight"].numpy()
    np.testing.assert_array_equal(model.keypoint_head.final_layer.weight.numpy(), source[[2, 0]])
    assert "2 of 2 joints carried by name (right_eye, nose), 0 new" in lines[0]
    pd_path = os.path.join(os.path.dirname(lite18_weights), "pd.pdparams")  # PaddleDetection's names: final_conv
    paddle.save({M.paddledetection_key(k): v for k, v in paddle.load(lite18_weights).items()}, pd_path)
    model = M.load_weights(M.build_model("lite_hrnet_18", 4), pd_path, log=lines.append, keypoint_names=ARM4)
    np.testing.assert_array_equal(model.keypoint_head.final_layer.weight.numpy(), source[[7, 8, 9, 10]])
    with pytest.raises(ValueError, match=r"--weights \S+lite18.pdparams: checkpoint does not fit HRNet"):
        M.load_weights(M.build_model("hrnet_w32", 4), lite18_weights, keypoint_names=ARM4, flag="--weights")
    path14 = os.path.join(os.path.dirname(lite18_weights), "k14.pdparams")
    paddle.save(M.build_model("lite_hrnet_18", 14).state_dict(), path14)
    with pytest.raises(ValueError, match="its final layer predicts 14 keypoints, not the 17 its record names"):
        M.load_weights(M.build_model("lite_hrnet_18", 4), path14, keypoint_names=ARM4)


def test_zero_step_carried_head_predicts_the_source_models_keypoints_on_a_named_subset(coco17_checkpoint,
                                                                                        synthetic_root, arm4):
    path, source = coco17_checkpoint
    model = M.load_weights(M.build_model("lite_hrnet_18", 4), path, log=lambda *a: None, keypoint_names=ARM4)
    keypoints = {}
    for net, root in ((source, synthetic_root), (model, arm4[0])):
        val = data.COCOKeypointDataset(os.path.join(root, "annotations", "person_keypoints_val2017.json"),
                                       os.path.join(root, "val2017"), (96, 128), train=False)
        loader = paddle.io.DataLoader(val, batch_size=16, shuffle=False)
        keypoints[root] = np.concatenate([ev.heatmaps_to_keypoints(heatmaps, val.centers[indices], val.scales[indices])[0]
                                          for heatmaps, indices, _ in
                                          ev.predict_heatmaps(net, loader, flip=True, flip_pairs=val.info.flip_pairs)])
    np.testing.assert_allclose(keypoints[arm4[0]], keypoints[synthetic_root][:, [7, 8, 9, 10]], atol=1e-3)


def test_fine_tuned_run_records_the_datasets_keypoints_and_unknown_names_start_a_new_head(coco17_checkpoint, arm4,
                                                                                          tmp_path, capsys):
    path, source = coco17_checkpoint
    T.train(tiny_run_args(arm4[0], tmp_path / "named", "--epochs", "1", "--weights", path))
    assert "final layer: 4 of 4 joints carried by name (left_elbow, right_elbow, left_wrist, right_wrist), 0 new" \
        in capsys.readouterr().out
    record = paddle.load(str(tmp_path / "named" / "best.pdparams"))["record"]
    assert record["keypoint_names"] == ARM4 and record["flip_pairs"] == [[0, 1], [2, 3]]
    assert record["skeleton"] == [[0, 2], [1, 3]] and record["sigmas"] == [0.072, 0.072, 0.062, 0.062]
    model, _ = M.load_checkpoint(str(tmp_path / "named" / "best.pdparams"))  # --weights alone from here on
    assert model.keypoint_head.final_layer.weight.shape == [4, 40, 1, 1]
    with pytest.warns(UserWarning):  # p1..p4: no flip pairs, no sigmas
        T.train(tiny_run_args(arm4[1], tmp_path / "unknown", "--epochs", "1", "--weights", path))
    assert "final layer: 0 of 4 joints carried by name, 4 new (p1, p2, p3, p4)" in capsys.readouterr().out
    assert paddle.load(str(tmp_path / "unknown" / "best.pdparams"))["record"]["keypoint_names"] == ["p1", "p2", "p3",
                                                                                                     "p4"]


def test_freeze_backbone_trains_only_the_final_layer_and_keeps_batch_norm_statistics(coco17_checkpoint, arm4,
                                                                                       tmp_path):
    path, source = coco17_checkpoint
    T.train(tiny_run_args(arm4[0], tmp_path, "--epochs", "1", "--weights", path, "--freeze-backbone"))
    state, _ = M.read_checkpoint(str(tmp_path / "last.pdparams"))
    for key, value in source.backbone.state_dict().items():  # weights and BatchNorm running statistics
        np.testing.assert_array_equal(state["backbone." + key], value.numpy())
    rows = source.keypoint_head.final_layer.weight.numpy()[[7, 8, 9, 10]]
    assert np.abs(state["keypoint_head.final_layer.weight"] - rows).max() > 0


def test_a_crowdpose_style_set_fine_tunes_from_a_17_joint_checkpoint_with_weights_alone(coco17_checkpoint, tmp_path,
                                                                                          capsys):
    folder = public_style_set(tmp_path, "crowdpose")
    with pytest.warns(UserWarning):  # CrowdPose's own sigmas; COCO's skeleton dropped
        T.main(["--data", folder, "--weights", coco17_checkpoint[0], "--input-size", "64x64",
                "--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-flip", "--out", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    assert ("final layer: 12 of 14 joints carried by name (left_shoulder, right_shoulder, left_elbow, right_elbow, "
            "left_wrist, right_wrist, ...), 2 new (head, neck)") in printed
    assert paddle.load(str(tmp_path / "run" / "best.pdparams"))["record"]["num_joints"] == 14


# ---- issue 21: a quantized export is never slower than its float export


@pytest.fixture
def qat_export_copy(qat_run, tmp_path):
    """A private copy of qat_run's export: the auto choice is remembered in the export folder."""
    folder = str(tmp_path / "int8")
    shutil.copytree(qat_run["export"], folder)
    return folder


def fake_timings(seconds_by_batch):
    """A stand-in for export.time_interleaved: {batch size: (int8 seconds, float seconds)} as 7 rounds each,
    one int8 round an outlier (the median ignores it); records the batch sizes it was asked for."""
    asked = []

    def timings(runs, batch):
        asked.append(len(batch))
        for run in runs.values():  # the programs are built and run, as the real timing does
            assert run(batch).shape[0] == len(batch)
        int8, fp32 = seconds_by_batch[len(batch)]
        return {"int8": [int8] * 6 + [100 * int8], "fp32": [fp32] * 7}

    return timings, asked


def test_choose_precision_takes_int8_only_when_clearly_faster():
    assert ex.choose_precision([1.0] * 5, [2.0] * 5) == ("int8", 2.0)
    precision, ratio = ex.choose_precision([1.0] * 5, [1.02] * 5)  # within noise: the float program
    assert precision == "fp32" and ratio == pytest.approx(1.02)
    assert ex.choose_precision([1.0, 1.0, 9.0], [1.1, 1.1, 0.1])[0] == "int8"  # medians: 1.1 / 1.0
    assert ex.choose_precision([1.0] * 3, [1.05] * 3, min_gain=1.1)[0] == "fp32"
    assert ex.choose_precision([1.0] * 3, [0.5] * 3) == ("fp32", 0.5)


def test_time_interleaved_alternates_and_keeps_rounds_after_warmup():
    calls = []
    times = ex.time_interleaved({"a": lambda b: calls.append("a"), "b": lambda b: calls.append("b")}, None,
                                warmup=2, min_rounds=3, max_rounds=3, budget=0)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # 2 warm-up + 3 rounds, order alternating
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3}


@pytest.mark.xdist_group("qat")
def test_quantized_export_float_program_is_the_qat_model_without_input_rounding(qat_run, synthetic_root,
                                                                                monkeypatch):
    pose = ex.read_pose_json(qat_run["export"])
    assert (pose["float_model_file"], pose["float_params_file"]) == ("float.pdmodel", "float.pdiparams")
    model = Q.load_qat_model(qat_run["qat"])
    model.eval()
    pairs = Q.conv_bn_pairs(model, (64, 64))
    # the clips quantize.py kept: the same search on the same training crops (their augmentation is seeded)
    args = T.apply_recipe(Q.build_parser().parse_args(qat_run["argv"]), Q.QAT_RECIPES, weights=qat_run["float"])
    crops = Q.calibration_crops(T.build_datasets(args)[0])
    kept = Q.drop_idle_clips(Q.folded_twin(model, pairs, Q.FoldedConv2D), crops, 0.01)
    assert f"\nfloat program: {len(kept)} of 301 conv inputs clipped as in QAT" in qat_run["log"]
    x = val_crops(synthetic_root)[:16]
    quantized_inputs = outputs(model, x)
    names = {id(layer): name for name, layer in model.named_sublayers()}
    clipped, cuts = set(kept), {}  # the convs whose inputs are clipped; the share each clip cuts off (squared)

    def clipped_not_rounded(layer, inputs):
        limit = layer.input_scale.item() if layer.pact_alpha is None else min(layer.input_scale.item(),
                                                                              layer.pact_alpha.item())
        cuts[names[id(layer)]] = float((F.relu(inputs.abs() - limit) ** 2).sum() / (inputs ** 2).sum())
        return paddle.clip(inputs, -limit, limit) if names[id(layer)] in clipped else inputs

    monkeypatch.setattr(M.QuantConv2D, "quantize_input", clipped_not_rounded)
    expected = outputs(model, x)  # fake-quantized weights, clipped float inputs: what the float program computes
    for backend in ("openvino", "paddle"):
        run = ex.create_predictor(qat_run["export"], backend, "cpu", precision="fp32")
        got = run(x)
        # BatchNorm folded into the weights: float sums in another order, no rounding that could flip
        assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max(), backend
    assert set(ex.openvino_conv_precisions(ex.create_predictor(qat_run["export"], "openvino", "cpu",
                                                               precision="fp32"))) == {"f32"}
    # and it is not the int8 program: the input rounding changes this barely trained model's flat heatmaps
    # (how much AP that costs or gains is quantize.py's report on a trained model)
    assert np.abs(got - quantized_inputs).max() > 1e-3 * np.abs(quantized_inputs).max()

    # the search, at a tolerance that must keep some clips: a tenth of what leaving out every clip changes
    def change(heatmaps, reference):  # relative RMS per crop, averaged
        return np.mean(np.sqrt(((heatmaps - reference) ** 2).sum((1, 2, 3)) / (reference ** 2).sum((1, 2, 3))))

    clipped.update(names.values())
    every_clip, cuts_of_every_clip = outputs(model, crops), dict(cuts)
    clipped.clear()
    tolerance = change(outputs(model, crops), every_clip) / 10
    kept = Q.drop_idle_clips(Q.folded_twin(model, pairs, Q.FoldedConv2D), crops, tolerance)
    assert 0 < len(kept) < 301
    clipped.update(kept)
    assert change(outputs(model, crops), every_clip) <= tolerance
    # the clips left out cut least, and leaving out the next one would change the heatmaps beyond the tolerance
    next_clip = min(kept, key=cuts_of_every_clip.get)
    assert cuts_of_every_clip[next_clip] >= (1 - 1e-3) * max(cut for name, cut in cuts_of_every_clip.items()
                                                             if name not in kept)
    clipped.remove(next_clip)
    assert change(outputs(model, crops), every_clip) > tolerance


@pytest.mark.xdist_group("qat")
def test_auto_runs_the_program_measured_faster_and_remembers_it(qat_export_copy, monkeypatch):
    timings, asked = fake_timings({1: (0.001, 0.002), 8: (0.004, 0.0039), 2: (0.001, 0.001)})
    monkeypatch.setattr(ex, "time_interleaved", timings)
    logs = []  # the auto choices (a CPU without VNNI adds a line per int8 program built: left out)

    def log(line):
        if line.startswith("auto:"):
            logs.append(line)

    run = ex.create_predictor(qat_export_copy, device="cpu", threads=1, log=log)
    assert asked == [1] and (run.backend, run.precision, run.chosen) == ("openvino", "auto", {1: "int8"})
    assert set(ex.openvino_conv_precisions(run)) <= INT8_CONVS  # the engine of batch 1 is the int8 program
    assert logs[0].startswith("auto: int8 runs 2.00x as fast as float on this machine at batch 1, 1 threads: "
                              "running int8 (measured")
    x = np.random.RandomState(0).randn(11, 3, 64, 64).astype("float32")
    float_program = ex.create_predictor(qat_export_copy, device="cpu", threads=1, precision="fp32")
    np.testing.assert_allclose(run(x[:8]), float_program(x[:8]), rtol=0, atol=1e-6)  # 0.98x: the float program
    assert asked == [1, 8] and run.chosen == {1: "int8", 8: "fp32"}
    assert "running the float program" in logs[1] and run.describe() == "OpenVINO auto: int8 at batch 1, fp32 at batch 8"
    assert run(x[:3]).shape[0] == 3 and asked == [1, 8, 2] and run.chosen[2] == "fp32"  # 3 crops: as batch 2
    assert run(x).shape[0] == 11 and asked == [1, 8, 2]  # 11 crops: as batch 8 (OpenVINO runs 8, 2 and 1)
    # explicit int8 runs int8 whatever was measured
    assert ex.create_predictor(qat_export_copy, device="cpu", threads=1, precision="int8").describe() == "OpenVINO int8"

    monkeypatch.setattr(ex, "time_interleaved", None)  # a second predictor reads the choices, times nothing
    logs.clear()
    again = ex.create_predictor(qat_export_copy, device="cpu", threads=1, log=log)
    again(x[:8])
    assert again.chosen == {1: "int8", 8: "fp32"} and len(logs) == 2 and all("(cached in " in line for line in logs)


@pytest.mark.xdist_group("qat")
def test_auto_choice_cache_belongs_to_machine_threads_and_programs(qat_export_copy, monkeypatch):
    one_thread, two_threads = ex.machine_key("openvino", 1), ex.machine_key("openvino", 2)
    assert one_thread != two_threads and ex.cached_choice(qat_export_copy, one_thread, 1) is None
    choice = {"precision": "fp32", "int8_vs_float": 0.9}
    assert ex.remember_choice(qat_export_copy, one_thread, 1, choice)
    assert ex.remember_choice(qat_export_copy, one_thread, 8, dict(choice, precision="int8"))
    assert ex.cached_choice(qat_export_copy, one_thread, 1) == choice
    assert ex.cached_choice(qat_export_copy, one_thread, 8)["precision"] == "int8"
    assert ex.cached_choice(qat_export_copy, two_threads, 1) is None  # other threads: measured again
    assert ex.cached_choice(qat_export_copy, one_thread.replace("cpus", "cpus (another)"), 1) is None
    timings, asked = fake_timings({1: (0.002, 0.001)})
    monkeypatch.setattr(ex, "time_interleaved", timings)
    monkeypatch.setattr(ex, "machine_key", lambda backend, threads: "another machine")
    assert ex.create_predictor(qat_export_copy, device="cpu", threads=1, log=[].append).chosen == {1: "fp32"}
    assert asked == [1]
    # a new export (the program files rewritten) makes every remembered choice stale
    program = os.path.join(qat_export_copy, "float.pdmodel")
    os.utime(program, ns=(os.stat(program).st_atime_ns, os.stat(program).st_mtime_ns + 10**9))
    assert ex.cached_choice(qat_export_copy, one_thread, 1) is None
    (open(os.path.join(qat_export_copy, ex.AUTO_CACHE_FILE), "w")).write("{not json")
    assert ex.cached_choice(qat_export_copy, one_thread, 1) is None  # unreadable: measured again, then rewritten
    assert ex.remember_choice(qat_export_copy, one_thread, 1, choice)
    assert ex.cached_choice(qat_export_copy, one_thread, 1) == choice


@pytest.mark.xdist_group("qat")
def test_a_quantized_export_without_a_float_program_runs_int8(qat_run, tmp_path):
    model = Q.load_qat_model(qat_run["qat"])
    Q.export_int8(model, str(tmp_path), "lite_hrnet_18", (64, 64), COCO_INFO, float_program=False)
    assert "float_model_file" not in ex.read_pose_json(str(tmp_path))
    assert not os.path.exists(tmp_path / "float.pdmodel")
    assert ex.create_predictor(str(tmp_path), device="cpu").describe() == "OpenVINO int8"
    raises_one_line(ValueError, "on OpenVINO a quantized program runs in int8", ex.create_predictor,
                    str(tmp_path), "openvino", "cpu", precision="fp32")
    assert not os.path.exists(tmp_path / ex.AUTO_CACHE_FILE)


@pytest.mark.xdist_group("qat")
def test_quantize_scores_both_programs_of_its_export(qat_run, synthetic_root, tmp_path, capsys):
    out = str(tmp_path / "int8")
    Q.main(["--data", synthetic_root, "--qat-weights", qat_run["qat"], "--export", out, "--workers", "0",
            "--no-flip", "--device", "cpu", "--batch-size", "8", "--float-program"])
    lines = capsys.readouterr().out.strip().splitlines()
    scores = re.fullmatch(r"AP QAT \(fake-quant\) (\S+)  int8 (\S+)  float program (\S+)", lines[-2])
    assert scores and lines[-1] == f"AP: {scores.group(2)}", lines[-2:]
    assert all(0 <= float(ap) <= 1 for ap in scores.groups())
    assert sorted(os.listdir(out)) == ["float.pdiparams", "float.pdmodel", "model.pdiparams", "model.pdmodel",
                                       "pose.json"]


# ---- issue 20: the teaching run in one sitting (speed, curves.png, heatmap pictures, per-joint table)

def test_synthetic_val_images_and_annotations_are_those_of_the_original_generator(tmp_path):
    """The teaching run's AP is measured on val: its images and annotations must stay what the generator wrote
    before the training set was made faster (val image i depends on (seed, split, i) only, so the first 8 of
    the default set are checked; digest computed with the generator of commit 40dbe5e)."""
    data.make_synthetic_dataset(str(tmp_path), num_train=0, num_val=8, workers=1)
    digest = hashlib.sha256()
    for name in ["annotations/person_keypoints_val2017.json",
                 "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"] + \
            sorted("val2017/" + f for f in os.listdir(tmp_path / "val2017")):
        digest.update((tmp_path / name).read_bytes())
    assert digest.hexdigest() == "8bf08316a55bb295b246a272bd71ca3033d2d86c64167e0442472e4c40717522"


def test_training_writes_curves_png_from_its_steps_and_evaluations(synthetic_root, tmp_path):
    out = tmp_path / "run"
    T.train(tiny_run_args(synthetic_root, out, "--epochs", "2", "--eval-every", "1", "--log-every", "1"))
    steps = T.read_jsonl_by_step(str(out / "steps.jsonl"))
    evaluations = read_metrics(out)
    assert [r["step"] for r in steps] == list(range(1, evaluations[-1]["step"] + 1))  # one point per step
    assert [r["epoch"] for r in evaluations] == [1, 2] and all("AP" in r for r in evaluations)
    curves = cv2.imread(str(out / "curves.png"))
    assert curves.shape == (510, 640, 3)  # three 150-px panels, their gaps and margins
    panel_rows = [(10 + i * 158, 10 + i * 158 + 150) for i in range(3)]
    for (top, bottom), colour in zip(panel_rows, ((200, 80, 0), (0, 140, 0), (0, 0, 200))):
        in_panel = np.all(curves[top:bottom] == colour, axis=2)
        assert in_panel[20:].sum() > 20  # each curve drawn in its panel (below the title)
    # a fresh run in the same folder starts the curves anew; --resume would have kept them
    T.train(tiny_run_args(synthetic_root, out, "--epochs", "1", "--eval-every", "1", "--log-every", "100"))
    assert [r["epoch"] for r in read_metrics(out)] == [1] and len(T.read_jsonl_by_step(str(out / "steps.jsonl"))) == 2


def test_curve_points_of_a_resumed_run_keep_the_last_written_per_step(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(dict(step=s, loss=l)) + "\n" for s, l in ((1, 9), (2, 8), (3, 7), (2, 5))))
    assert [(r["step"], r["loss"]) for r in T.read_jsonl_by_step(str(path))] == [(1, 9), (2, 5), (3, 7)]
    assert T.read_jsonl_by_step(str(tmp_path / "missing.jsonl")) == []


def test_nice_ticks_are_round_and_cover_the_range():
    assert T.nice_ticks(0, 90) == [0, 20, 40, 60, 80]
    assert T.nice_ticks(0.0006, 0.0038) == pytest.approx([0.001, 0.002, 0.003])
    assert T.nice_ticks(0.7, 0.7) == [0.7]


def test_heatmap_picture_blends_each_joint_over_the_crop_with_its_name():
    crop = np.full((128, 96, 3), 100, np.uint8)
    heatmaps = np.zeros((2, 32, 24), np.float32)
    heatmaps[0] = 1.0  # joint 0 everywhere certain, joint 1 nowhere
    picture = pr.draw_heatmaps([dict(crop=crop, heatmaps=heatmaps)] * 3, ["nose", "left_eye"], tile_height=192,
                               columns=6)
    assert picture.shape == (3 * (192 + 6), 6 * 144, 3)  # one block of crop + K tiles per person
    jet_top = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_JET)[0, 0].astype(float)
    assert np.allclose(picture[100, 144 + 70], 0.2 * 100 + 0.8 * jet_top, atol=1)  # joint 0: 80% JET red
    assert np.all(picture[100, 2 * 144 + 70] == 100)  # joint 1: the crop shows through
    assert np.all(picture[20:192, 70] == 100)  # the crop itself, unlabelled
    label = picture[:14, 144:288]
    assert label.max() > 200 and np.median(label) == 0  # a light name on a black strip


def test_predict_heatmaps_writes_a_picture_beside_each_drawing(lite18_weights, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DEMO, folder / "a.jpg")
    shutil.copy(ASTRONAUT, folder / "b.png")
    pr.main(["--model", "lite_hrnet_18", "--weights", lite18_weights, "--input-size", "128x96",
             "--input", str(folder), "--out", str(tmp_path / "out"), "--heatmaps"])
    assert sorted(os.listdir(tmp_path / "out")) == ["a.jpg", "a_heatmaps.jpg", "b.png", "b_heatmaps.jpg",
                                                    "predictions.json"]
    for name in ("a", "b"):  # whole-image box: one person, 1 + 17 tiles of 192x144 in rows of 6
        assert cv2.imread(str(tmp_path / "out" / f"{name}_heatmaps.jpg")).shape == (3 * 192 + 6, 6 * 144, 3)
    with pytest.raises(SystemExit):
        pr.main(["--model", "lite_hrnet_18", "--weights", lite18_weights, "--input", DEMO, "--heatmaps",
                 "--benchmark"])
    assert capsys.readouterr().err.strip().endswith("--heatmaps draws predictions; --benchmark makes none")


def test_per_joint_scores_agree_with_a_hand_computation():
    """Predictions = the GT keypoints moved by a known distance per joint: each joint's OKS term and PCK
    computed by hand from COCO's formula match what evaluate.per_joint_scores reads from COCOeval's matching."""
    gt = json.loads(open(TINY_ANN).read())
    shifts = 0.8 * np.arange(1, 18)  # joint k moved k * 0.8 px to the right
    results, expected = [], [[] for _ in range(17)]
    for ann in gt["annotations"]:
        if ann["num_keypoints"] == 0 or ann.get("iscrowd"):
            continue
        keypoints = np.array(ann["keypoints"], np.float64).reshape(17, 3)
        moved = keypoints.copy()
        moved[:, 0] += shifts
        moved[:, 2] = 1
        results.append(dict(image_id=ann["image_id"], category_id=1, keypoints=moved.ravel().tolist(), score=1.0))
        for k in np.flatnonzero(keypoints[:, 2] > 0):
            expected[k].append(np.exp(-shifts[k] ** 2 / (2 * ann["area"] * (2 * COCO_SIGMAS[k]) ** 2)))
    mean_oks, pck, counts = ev.per_joint_scores(ev.matched_cocoeval(TINY_ANN, results))
    assert counts.tolist() == [len(e) for e in expected]
    assert mean_oks == pytest.approx([np.mean(e) for e in expected], rel=1e-5)
    assert pck == pytest.approx([np.mean(np.array(e) >= 0.5) for e in expected])
    assert 0 < pck.min() < 1  # the shifts reach past the PCK radius of some joints, not all


def test_evaluate_prints_a_per_joint_table_after_the_ap_table(capsys):
    ev.main(["--ann", TINY_ANN, "--results", TINY_PREDICTIONS])
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("joint")))
    assert lines[header - 1].startswith("AR (L)") and lines[-1].startswith("AP:")
    rows = [line.split() for line in lines[header + 1:-1]]
    assert sorted(r[0] for r in rows) == sorted(data.COCO_KEYPOINT_NAMES)
    oks = [float(r[1]) for r in rows]
    assert oks == sorted(oks, reverse=True) and all(0 <= float(r[2]) <= 1 for r in rows)


def test_quick_recipe_defaults_show_in_help(capsys):
    with pytest.raises(SystemExit):
        T.main(["--help"])
    text = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())
    recipe = T.RECIPES["synthetic"]
    for flag, key in (("--schedule", "schedule"), ("--lr", "lr"), ("--batch-size", "batch_size"),
                      ("--warmup-steps", "warmup_steps"), ("--epochs", "epochs")):
        assert f"synthetic {recipe[key]}" in text.split(flag, 1)[1].split(" --", 1)[0]
    assert "--processes" in text and "2 for the synthetic teaching run" in text


def test_the_synthetic_default_launches_one_process_per_core_only_on_a_cpu_machine(monkeypatch):
    args = T.build_parser().parse_args([])
    args.benchmark, args.processes, args.device = 0, None, None
    monkeypatch.delenv("PADDLE_TRAINER_ID", raising=False)
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert T.processes_to_launch(args, synthetic=True) == 2
    assert T.processes_to_launch(args, synthetic=False) == 1  # --data: as asked (default one process)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert T.processes_to_launch(args, synthetic=True) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv("PADDLE_TRAINER_ID", "0")  # already one of the launcher's processes
    assert T.processes_to_launch(args, synthetic=True) == 1
    monkeypatch.delenv("PADDLE_TRAINER_ID")
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)  # a GPU machine: nothing changes
    assert T.processes_to_launch(args, synthetic=True) == 1
    args.processes = 2
    with pytest.raises(SystemExit, match="--processes 2 starts CPU processes"):
        T.processes_to_launch(args, synthetic=True)
    args.device = "cpu"
    assert T.processes_to_launch(args, synthetic=True) == 2


def test_cosine_schedule_falls_from_lr_to_zero_after_the_warmup():
    args = T.build_parser().parse_args(["--schedule", "cosine", "--lr", "4e-3", "--warmup-steps", "20",
                                        "--epochs", "2"])
    assert T.learning_rate(args, 0.0, 0) == pytest.approx(4e-6)  # warmup from 0.001 x lr
    assert T.learning_rate(args, 0.0, 20) == pytest.approx(4e-3)
    assert T.learning_rate(args, 1.0, 500) == pytest.approx(2e-3)  # half-way: half the rate
    assert T.learning_rate(args, 2.0, 1000) == pytest.approx(0, abs=1e-12)
    args.schedule, args.milestones = "step", [1.5]
    assert T.learning_rate(args, 1.0, 500) == pytest.approx(4e-3)
    assert T.learning_rate(args, 1.6, 800) == pytest.approx(4e-4)


SPLIT_EVALUATION_SCRIPT = """
import json, sys
sys.path.insert(0, {here!r})
import numpy as np, paddle, paddle.distributed as dist
import evaluate, model, train
from data import COCOKeypointDataset
dist.init_parallel_env()
paddle.seed(0)
net = model.build_model("lite_hrnet_18")
if dist.get_rank() == 1:  # BatchNorm statistics of its own, as after data-parallel training
    for name, value in net.state_dict().items():
        if name.endswith("_mean"):
            value.set_value(paddle.full_like(value, 0.5))
train.share_buffers(net)
dataset = COCOKeypointDataset({ann!r}, {images!r}, train=False, input_size=(64, 64), udp=True)
results, stats = evaluate.evaluate_model(net, dataset, batch_size=1, flip=True, log=lambda *a: None,
                                         data_parallel=True)
with open({out!r} + str(dist.get_rank()), "w") as f:
    json.dump(dict(results=[[r["image_id"], np.asarray(r["keypoints"]).ravel().tolist(), r["score"]]
                            for r in results], AP=stats["AP"]), f)
"""


@pytest.mark.xdist_group("launch")
def test_two_processes_split_the_evaluation_and_score_what_one_process_scores(synthetic_root, tmp_path):
    ann = os.path.join(synthetic_root, "annotations", "person_keypoints_val2017.json")
    images = os.path.join(synthetic_root, "val2017")
    script = tmp_path / "split_eval.py"
    script.write_text(SPLIT_EVALUATION_SCRIPT.format(here=HERE, ann=ann, images=images, out=str(tmp_path / "rank")))
    r = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                        "--log_dir", str(tmp_path / "log"), str(script)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (tmp_path / "log" / "workerlog.1").read_text()[-2000:]
    ranks = [json.loads((tmp_path / f"rank{rank}").read_text()) for rank in (0, 1)]
    paddle.seed(0)
    net = M.build_model("lite_hrnet_18")
    dataset = data.COCOKeypointDataset(ann, images, train=False, input_size=(64, 64), udp=True)
    results, stats = ev.evaluate_model(net, dataset, batch_size=1, flip=True, log=lambda *a: None)
    assert len(ranks[0]["results"]) == len(results) > 0 and ranks[0]["results"] == ranks[1]["results"]
    for (image_id, keypoints, score), expected in zip(ranks[0]["results"], results):
        assert image_id == expected["image_id"] and score == pytest.approx(expected["score"], rel=1e-4)
        np.testing.assert_allclose(keypoints, np.asarray(expected["keypoints"]).ravel(), rtol=1e-4, atol=1e-3)
    assert ranks[0]["AP"] == ranks[1]["AP"] == pytest.approx(stats["AP"], abs=1e-6)


# ---- ONNX (issue 27) ----

@pytest.fixture(scope="module")
def onnx_family(family_exports, tmp_path_factory):
    """{name: (eager model, export folder with model.onnx)} for the four networks: copies of family_exports'
    HRNet-W32 and Lite-HRNet-18 (64x64, real heatmap peaks), fresh Lite-HRNet-30 (64x64) and HRNet-W48 (32x32,
    its smallest input) with their legacy program and pose.json only."""
    models = {}
    for name in ("hrnet_w32", "lite_hrnet_18"):
        model, folder = family_exports[name]
        models[name] = (model, shutil.copytree(folder, str(tmp_path_factory.mktemp("onnx") / name)))
    for seed, (name, size) in enumerate((("lite_hrnet_30", (64, 64)), ("hrnet_w48", (32, 32)))):
        paddle.seed(seed)
        model = settle_batch_norm(M.build_model(name), (2, 3, *size))
        folder = str(tmp_path_factory.mktemp("onnx") / name)
        os.makedirs(folder)
        with ex.traced_in_eval_mode(model):  # the ONNX program's source only: no PIR program (a third of the time)
            ex.save_legacy_program(model, os.path.join(folder, "legacy"), size)
        ex.write_pose_json(folder, name, size, COCO_INFO, legacy_files=ex.LEGACY_FILES)
        models[name] = (model, folder)
    for name, (_, folder) in models.items():
        assert ex.export_onnx(folder) == os.path.join(folder, "model.onnx")
    return models


@pytest.mark.xdist_group("family")
@pytest.mark.parametrize("name", ["lite_hrnet_18", "lite_hrnet_30", "hrnet_w32", "hrnet_w48"])
def test_onnx_of_every_network_equals_eager_mode_at_any_batch_size(name, onnx_family):
    model, folder = onnx_family[name]
    assert ex.read_pose_json(folder)["onnx_file"] == "model.onnx"
    run = ex.create_predictor(folder, "onnxruntime", "cpu")
    assert (run.backend, run.precision, run.describe()) == ("onnxruntime", "fp32", "onnxruntime fp32")
    for batch in (1, 3):
        _, relative = ex.check_export(model, folder, batch_size=batch, backend="onnxruntime")
        assert relative <= 1e-4, (name, batch, relative)


@pytest.mark.xdist_group("family")
def test_export_check_covers_the_onnx_program(onnx_family, monkeypatch, tmp_path):
    model, folder = onnx_family["lite_hrnet_18"]
    monkeypatch.setattr(ex, "import_openvino", lambda: None)  # OpenVINO's checks are tested elsewhere
    lines = []
    ex.check_backends(model, folder, log=lines.append)
    assert [line.split(" vs eager")[0] for line in lines[1:]] == ["paddle.inference (CPU, oneDNN)", "onnxruntime (CPU)"]
    assert float(re.search(r"\((\S+) of the largest output\)", lines[-1]).group(1)) <= 1e-4
    with pytest.raises(SystemExit, match="^error: --onnx converts legacy.pdmodel: leave out --no-legacy$"):
        ex.main(["--model", "lite_hrnet_18", "--weights", "unused.pdparams", "--out", str(tmp_path / "x"), "--onnx",
                 "--no-legacy"])


@pytest.mark.xdist_group("family")
def test_onnxruntime_backend_errors_are_one_line(family_exports, onnx_family, monkeypatch, tmp_path):
    folder = onnx_family["lite_hrnet_18"][1]
    raises_one_line(FileNotFoundError, "has no ONNX program: export it again with export.py --onnx",
                    ex.create_predictor, family_exports["lite_hrnet_18"][1], "onnxruntime")  # an export without one
    raises_one_line(ValueError, "--precision bf16: the ONNX program of .* runs in fp32", ex.create_predictor, folder,
                    "onnxruntime", precision="bf16")
    broken = shutil.copytree(folder, str(tmp_path / "broken"))
    os.remove(os.path.join(broken, "model.onnx"))
    raises_one_line(FileNotFoundError, "no model.onnx", ex.create_predictor, broken, "onnxruntime")
    with open(os.path.join(broken, "model.onnx"), "wb") as f:
        f.write(b"not an onnx file")
    raises_one_line(ValueError, "model.onnx: onnxruntime cannot load it", ex.create_predictor, broken, "onnxruntime")
    pose = json.loads(open(os.path.join(broken, "pose.json")).read())
    del pose["onnx_file"]  # a pose.json written before the key existed
    with open(os.path.join(broken, "pose.json"), "w") as f:
        json.dump(pose, f)
    assert ex.read_pose_json(broken)["model"] == "lite_hrnet_18"
    raises_one_line(FileNotFoundError, "has no ONNX program", ex.create_predictor, broken, "onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    raises_one_line(ValueError, r"--backend onnxruntime needs onnxruntime: pip install onnxruntime",
                    ex.create_predictor, folder, "onnxruntime")
    with pytest.raises(SystemExit, match=r"^error: --onnx needs onnxruntime: pip install onnxruntime$"):
        ex.main(["--model", "lite_hrnet_18", "--weights", "unused.pdparams", "--out", str(tmp_path / "x"), "--onnx"])
    assert not (tmp_path / "x").exists()


@pytest.mark.xdist_group("family")
def test_evaluate_and_predict_run_the_onnx_program(onnx_family, tmp_path, capsys):
    folder = onnx_family["lite_hrnet_18"][1]
    common = ["--data", TINY, "--workers", "0", "--no-flip", "--device", "cpu", "--model-dir", folder]
    ap, results = {}, {}
    for backend in ("paddle", "onnxruntime"):
        out = str(tmp_path / f"{backend}.json")
        ap[backend], first_line = evaluated_ap(common + ["--backend", backend, "--out", out], capsys)
        assert f"({ex.RUNTIME_NAMES[backend]} fp32)" in first_line
        results[backend] = json.loads(open(out).read())
    assert abs(ap["onnxruntime"] - ap["paddle"]) <= 0.002, ap
    assert len(results["onnxruntime"]) == len(results["paddle"]) > 0  # a random network: AP about 0 either way
    same = [np.abs(np.subtract(a["keypoints"], b["keypoints"])).max() < 0.01
            for a, b in zip(results["onnxruntime"], results["paddle"])]
    assert np.mean(same) >= 0.9  # a rare near-tie of two heatmap pixels may flip
    pr.main(["--model-dir", folder, "--backend", "onnxruntime", "--input", DEMO, "--out", str(tmp_path)])
    assert "(onnxruntime fp32)" in capsys.readouterr().out.splitlines()[0]
    [entry] = json.loads((tmp_path / pr.PREDICTIONS_FILE).read_text())["results"]
    assert len(entry["people"]) == 1 and len(entry["people"][0]["keypoints"]) == 17


@pytest.mark.xdist_group("qat")
def test_quantized_export_writes_its_float_program_as_onnx_and_says_why(qat_run, qat_export_copy):
    lines = []
    Q.export_quantized_onnx(Q.load_qat_model(qat_run["qat"]), qat_export_copy, log=lines.append)
    assert len(lines) == 1 and "float.onnx: the float program, no int8 ONNX (paddle2onnx " in lines[0], lines
    # checked against paddle.inference's run of the float program
    assert float(re.search(r"\((\S+) of the largest output\)", lines[0]).group(1)) <= 1e-4
    assert ex.read_pose_json(qat_export_copy)["onnx_file"] == "float.onnx"
    assert ex.create_predictor(qat_export_copy, "onnxruntime", "cpu").describe() == "onnxruntime fp32"
    raises_one_line(ValueError, "--precision int8: the ONNX program of .* runs in fp32", ex.create_predictor,
                    qat_export_copy, "onnxruntime", precision="int8")


def readme_block(marker):
    """The ```python block of README.md that contains marker."""
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    return next(block for block in blocks if marker in block)


@pytest.mark.xdist_group("family")
def test_readme_onnx_example_finds_the_keypoints_predict_finds_without_paddle(onnx_family, tmp_path):
    folder = onnx_family["lite_hrnet_18"][1]
    with open(TINY_ANN) as f:
        annotations = json.load(f)
    person = next(a for a in annotations["annotations"] if a["num_keypoints"] > 10)
    [name] = [i["file_name"] for i in annotations["images"] if i["id"] == person["image_id"]]
    image = os.path.join(TINY_IMAGES, name)
    # paddle made unimportable, the example's inputs as its command line, run outside the repository
    run_without_paddle = "import os, sys; sys.modules['paddle'] = None; exec(os.environ['EXAMPLE'])"
    done = subprocess.run([sys.executable, "-c", run_without_paddle, folder, image, *map(str, person["bbox"])],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, EXAMPLE=readme_block("import onnxruntime")))
    assert done.returncode == 0 and not done.stderr, done.stderr[-2000:]
    found = np.array([[float(v) for v in line.split()[2:7:2]] for line in done.stdout.splitlines()])
    expected = pr.predict_image(ex.create_predictor(folder, "paddle", "cpu"), data.read_image_rgb(image),
                                [(person["bbox"], 1.0)], ex.read_pose_json(folder))[0]["keypoints"]
    assert found.shape == expected.shape == (17, 3)
    assert np.abs(found[:, 2] - expected[:, 2]).max() <= 1e-3
    # where no heatmap value is above 0, predict.py (the official decoding) puts the keypoint at the heatmap's
    # corner and the example at its largest value: a keypoint neither has found
    peaked = expected[:, 2] > 0
    assert peaked.sum() >= 12 and np.abs(found[peaked, :2] - expected[peaked, :2]).max() <= 1.0


# ---- The lesson (issue 28) ----

def official_msra_target(joints, vis, input_size, heatmap_size, sigma):
    """HRNet's JointsDataset.generate_target (gaussian branch), transliterated."""
    width, height = heatmap_size
    target = np.zeros((len(joints), height, width), np.float32)
    weight = np.array(vis, np.float32).reshape(-1, 1)
    tmp_size = sigma * 3
    for k, (x, y) in enumerate(joints):
        mu_x, mu_y = int(x / (input_size[0] / width) + 0.5), int(y / (input_size[1] / height) + 0.5)
        ul, br = [int(mu_x - tmp_size), int(mu_y - tmp_size)], [int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1)]
        if ul[0] >= width or ul[1] >= height or br[0] < 0 or br[1] < 0:
            weight[k] = 0
            continue
        size = 2 * tmp_size + 1
        xs = np.arange(0, size, 1, np.float32)
        ys = xs[:, np.newaxis]
        g = np.exp(-((xs - size // 2) ** 2 + (ys - size // 2) ** 2) / (2 * sigma ** 2))
        gx, gy = (max(0, -ul[0]), min(br[0], width) - ul[0]), (max(0, -ul[1]), min(br[1], height) - ul[1])
        img_x, img_y = (max(0, ul[0]), min(br[0], width)), (max(0, ul[1]), min(br[1], height))
        if weight[k] > 0.5:
            target[k][img_y[0]:img_y[1], img_x[0]:img_x[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
    return target, weight


def test_target_peaks_on_its_joint_for_every_sigma_and_is_the_official_one_where_that_does():
    """Where 3 sigma has a fraction below one half (sigma 0.75, the default at 96x64, which taught the network to
    point a pixel up and left) the official patch's peak is a pixel early: the target peaks on the joint instead.
    Every other sigma gives the official maps, bit for bit (with the official quirk at the top and left edge)."""
    rng = np.random.default_rng(0)
    joints = rng.uniform([0, 0], [61, 93], (200, 2))  # peaks inside the 16x24 map
    vis = np.ones(200, np.float32)
    mu = (joints / 4 + 0.5).astype(int)
    for sigma in (0.5, 0.75, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0):
        target, weight = data.generate_target(joints, vis, (64, 96), (16, 24), sigma)
        official, official_weight = official_msra_target(joints, vis, (64, 96), (16, 24), sigma)
        np.testing.assert_array_equal(weight, official_weight)
        if not 0 < (3 * sigma) % 1 < 0.5:
            np.testing.assert_array_equal(target, official)
            continue
        peaks = [np.unravel_index(t.argmax(), t.shape)[::-1] for t in target]
        assert np.array_equal(peaks, mu) and np.all(target.max(axis=(1, 2)) == 1), sigma
        inside = np.all(mu >= 3 * sigma, axis=1)  # windows that start inside the map
        official_peaks = [np.unravel_index(t.argmax(), t.shape)[::-1] for t in official[inside]]
        assert np.array_equal(official_peaks, mu[inside] - 1)  # one pixel up and left of the joint


def test_draw_learning_fills_a_row_left_to_right_with_labelled_snapshots():
    crop = np.full((64, 48, 3), 100, np.uint8)
    certain, unsure = np.zeros((2, 16, 12), np.float32), np.zeros((2, 16, 12), np.float32)
    certain[0, :8] = 1.0  # the top half of the map sure of joint 0
    keypoints = np.array([[10.0, 20.0, 0.9], [30.0, 40.0, 0.9]])
    snapshots = [("step 5  loss 0.004", unsure, keypoints * [1, 1, 0.1]), ("step 10  loss 0.002", certain, keypoints)]
    picture = data.draw_learning(crop, snapshots, [(0, 1)], columns=4, height=128)
    assert picture.shape == (128, 4 * 96, 3)  # one row of four 128-px tiles, the crop scaled 2x
    assert np.all(picture[:, 2 * 96:] == 0)  # snapshots still to come: black
    jet_top = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_JET)[0, 0].astype(float)
    assert np.allclose(picture[40, 96 + 90], 0.2 * 100 + 0.8 * jet_top, atol=1)  # heatmap 1: 80% JET red
    assert np.all(picture[100, 96 + 90] == 100)  # heatmap 0: the crop
    assert np.all(picture[20:, :96] == 100)  # unsure everywhere: neither colour nor skeleton
    assert tuple(picture[60, 96 + 40]) == (255, 255, 255)  # the limb between the two sure joints, white, 2x
    assert picture[:19, :96].max() > 200 and np.median(picture[:19, :96]) == 0  # the label on a black strip


@pytest.mark.xdist_group("qat")
def test_training_run_draws_learning_jpg_at_eight_points(qat_run):
    """qat_run's float run: 3 epochs of 3 steps, 64x64 crops: eight snapshots, one row of 256-px tiles."""
    picture = cv2.imread(str(qat_run["root"] / "float" / "learning.jpg"))
    assert picture.shape == (256, 8 * 256, 3)
    for k in range(8):
        tile = picture[:, k * 256:(k + 1) * 256]
        assert np.median(tile[:19]) < 30 and tile[:19].max() > 200  # every tile labelled: none still to come
        assert tile[19:].mean() > 20  # and drawn


def test_the_teaching_recipe_decodes_with_dark_and_help_says_so(capsys):
    assert (T.RECIPES["synthetic"]["decode"], T.RECIPES["hrnet"]["decode"], T.RECIPES["lite_hrnet"]["decode"]) == (
        "dark", "default", "default")
    with pytest.raises(SystemExit):
        T.main(["--help"])
    text = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())
    kernel = T.RECIPES["synthetic"]["dark_kernel"]
    assert "synthetic dark)" in text.split("--decode", 1)[1].split(" --", 1)[0]
    assert f"synthetic {kernel})" in text.split("--dark-kernel", 1)[1].split(" --", 1)[0]
    assert "(default: 8)" in text.split("--snapshots", 1)[1].split(" --", 1)[0]
    with pytest.raises(SystemExit):
        T.build_parser().parse_args(["--dark-kernel", "4"])
    assert "--dark-kernel: expected an odd number, got 4" in capsys.readouterr().err


def test_checkpoints_say_how_to_decode_and_evaluate_and_predict_follow(synthetic_root, lite18_weights, tmp_path,
                                                                        capsys, monkeypatch):
    decodings, evaluate_model = [], ev.evaluate_model

    def spy(model, dataset, batch_size, flip, decode, dark_kernel, *rest, **options):
        decodings.append((decode, dark_kernel))
        return evaluate_model(model, dataset, batch_size, flip, decode, dark_kernel, *rest, **options)
    monkeypatch.setattr(ev, "evaluate_model", spy)
    state, _ = M.read_checkpoint(lite18_weights)
    dark = str(tmp_path / "dark.pdparams")
    M.save_checkpoint(dict(model=state, record=M.model_record("lite_hrnet_18", (64, 64), COCO_INFO, decode="dark",
                                                               dark_kernel=5)), dark)
    assert M.decoding_of(M.read_checkpoint(dark)[1]) == ("dark", 5) and M.decoding_of({}) == ("default", 3)
    results = {}
    for name, extra in (("own", []), ("dark5", ["--decode", "dark", "--dark-kernel", "5"]),
                        ("default", ["--decode", "default"])):
        out = tmp_path / f"{name}.json"
        ev.main(["--data", synthetic_root, "--weights", dark, "--no-flip", "--workers", "0", "--out", str(out), *extra])
        results[name] = (capsys.readouterr().out.splitlines()[0], json.loads(out.read_text()))
    assert results["own"][0].endswith("decode dark (kernel 5) as the checkpoint says (--decode default: the "
                                      "official), flip off")
    assert results["default"][0].endswith("decode default, flip off")
    assert decodings == [("dark", 5), ("dark", 5), ("default", 5)]
    assert results["own"][1] == results["dark5"][1]
    # a fine-tuning run from it keeps its decoding unless told otherwise
    args = T.apply_recipe(T.build_parser().parse_args(["--data", synthetic_root, "--weights", dark]))
    assert (args.decode, args.dark_kernel, args.input_size) == ("dark", 5, "64x64")
    pr.main(["--weights", dark, "--input", DEMO, "--out", str(tmp_path / "drawn")])
    assert "decode dark (kernel 5) as the checkpoint says" in capsys.readouterr().out


def test_exports_carry_the_decoding_and_older_pose_json_decodes_as_before(tmp_path):
    pose = ex.pose_metadata("lite_hrnet_18", "128x96", COCO_INFO, decoding=("dark", 5))
    (tmp_path / "pose.json").write_text(json.dumps(pose))
    assert M.decoding_of(ex.read_pose_json(str(tmp_path))) == ("dark", 5)
    older = {k: v for k, v in pose.items() if k not in ex.DECODE_KEYS}
    (tmp_path / "pose.json").write_text(json.dumps(older))
    assert M.decoding_of(ex.read_pose_json(str(tmp_path))) == ("default", 3)
    for key, value in (("decode", "argmax"), ("dark_kernel", 4)):
        (tmp_path / "pose.json").write_text(json.dumps(dict(pose, **{key: value})))
        raises_one_line(ValueError, f"pose.json: {key} is .*, expected", ex.read_pose_json, str(tmp_path))


def test_the_synthetic_set_is_made_once_and_again_when_it_holds_another_number_of_training_images(
        tmp_path, monkeypatch, capsys):
    root = tmp_path / "synthetic"
    made = []
    monkeypatch.setattr(T, "SYNTHETIC_DIR", str(root))
    monkeypatch.setattr(T, "make_synthetic_dataset", made.append)
    T.make_synthetic_set_once()
    assert made == [str(root)] and "generating the synthetic dataset" in capsys.readouterr().out
    data.make_synthetic_dataset(str(root), num_train=2, num_val=1, workers=1)
    monkeypatch.setattr(T, "SYNTHETIC_TRAIN_IMAGES", 2)
    T.make_synthetic_set_once()
    assert len(made) == 1 and capsys.readouterr().out == ""
    monkeypatch.setattr(T, "SYNTHETIC_TRAIN_IMAGES", 3)  # a folder made for another recipe
    T.make_synthetic_set_once()
    assert len(made) == 2 and "has 2 training images, the recipe 3: making it again" in capsys.readouterr().out


# ---- README's pictures (issue 29)

@pytest.mark.xdist_group("qat")
def test_readme_figures_are_made_again_from_a_run_and_stay_small(qat_run, synthetic_root, tmp_path, capsys):
    run_folder, out = os.path.dirname(qat_run["float"]), tmp_path / "assets"
    image = os.path.join(synthetic_root, "val2017", sorted(os.listdir(os.path.join(synthetic_root, "val2017")))[0])
    pr.main(["--weights", qat_run["float"], "--input", image, "--readme-figures", str(out)])
    names = ["curves.png", "learning.jpg", "heatmaps.jpg", "tracked_frame.jpg"]
    assert sorted(os.listdir(out)) == sorted(names)
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")][-4:] == \
        [str(out / name) for name in names]
    for name in names:
        assert os.path.getsize(out / name) <= 150_000 and cv2.imread(str(out / name)) is not None
    assert np.array_equal(cv2.imread(str(out / "curves.png")), cv2.imread(os.path.join(run_folder, "curves.png")))
    assert cv2.imread(str(out / "tracked_frame.jpg")).shape == (240, 320, 3)  # make_synthetic_video's frame
    alone = tmp_path / "elsewhere"  # a checkpoint away from its run folder has no curves to show
    alone.mkdir()
    shutil.copy(qat_run["float"], alone / "best.pdparams")
    with pytest.raises(SystemExit, match=r"^error: image .*curves.png not found$"):
        pr.main(["--weights", str(alone / "best.pdparams"), "--input", image, "--readme-figures", str(out)])


def test_readme_pictures_are_shrunk_until_they_fit():
    noise = np.random.RandomState(0).randint(0, 256, (1200, 1600, 3), np.uint8)  # incompressible
    for suffix in (".jpg", ".png"):
        encoded = pr.encoded_within(noise, "picture" + suffix, 150_000)
        assert len(encoded) <= 150_000
        decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
        assert decoded.shape[2] == 3 and decoded.shape[1] / decoded.shape[0] == pytest.approx(4 / 3, rel=0.01)


def test_readme_is_a_front_door_with_pictures_in_the_repository():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert len(readme.encode("utf-8")) <= 30_000
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", readme) and "the seed" not in readme  # no dated lines, names
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert pictures and all(p.startswith("assets/") for p in pictures)
    sizes = [os.path.getsize(os.path.join(HERE, p)) for p in pictures]  # a missing picture fails here
    assert max(sizes) <= 150_000 and sum(sizes) <= 1_000_000
    with open(os.path.join(HERE, ".ci", "run")) as f:
        ci_command = f.read().strip().splitlines()[-1]
    assert f"```bash\n{ci_command}\n```" in readme  # CI runs exactly README's test command
    assert "```bash\npip install -r requirements.txt && python train.py\n```" in readme


def test_wait_for_store_returns_once_the_port_listens_or_at_its_timeout():
    import socket
    import time
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    endpoint = f"127.0.0.1:{server.getsockname()[1]}"
    start = time.time()
    T.wait_for_store(endpoint, timeout=0.3)  # bound, not listening: refused until the timeout
    assert 0.3 <= time.time() - start < 2
    threading.Timer(0.2, server.listen).start()
    start = time.time()
    T.wait_for_store(endpoint, timeout=10)
    assert 0.2 <= time.time() - start < 2
    server.close()
