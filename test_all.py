"""The whole test suite: python -m pytest -q test_all.py (CPU only)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import model as M  # sets OMP_NUM_THREADS before paddle is imported
import paddle
import paddle.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "shared", "data")


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


def test_lite_fuse_reproduces_the_official_in_place_loop():
    """Run the official loop literally, with in-place adds that alias out[0], and compare."""
    paddle.seed(1)
    module = settle_batch_norm(_Branches(M.LiteHRModule([40, 80, 160])), (2, 160, 32, 24)).module
    xs = [paddle.to_tensor(np.random.RandomState(i).randn(2, c, 32 // 2 ** i, 24 // 2 ** i).astype("float32"))
          for i, c in enumerate([40, 80, 160])]
    with paddle.no_grad():
        out = module.layers(xs)
        official = []
        for i in range(3):
            y = out[0] if i == 0 else module.fuse_layers[i][0](out[0])
            for j in range(3):
                y.add_(out[j] if i == j else module.fuse_layers[i][j](out[j]))
            official.append(F.relu(y))
        ours = module(xs)
    for a, b in zip(official, ours):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


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
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: checkpoint does not fit HRNet")
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


@pytest.mark.parametrize("name", ["hrnet_w32", "lite_hrnet_18"])
def test_exported_model_runs_in_paddle_inference_with_onednn(name, small_models, tmp_path):
    from paddle import inference
    from paddle.static import InputSpec
    m = small_models[name]
    static = paddle.jit.to_static(m, input_spec=[InputSpec([None, 3, 256, 192], "float32", "image")], full_graph=True)
    paddle.jit.save(static, str(tmp_path / "model"))
    assert (tmp_path / "model.json").exists()  # PIR program format
    cfg = inference.Config(str(tmp_path / "model.json"), str(tmp_path / "model.pdiparams"))
    cfg.disable_gpu()
    cfg.enable_mkldnn()
    cfg.disable_glog_info()
    predictor = inference.create_predictor(cfg)
    for batch in (1, 3):  # dynamic batch
        x = np.random.RandomState(batch).randn(batch, 3, 256, 192).astype("float32")
        handle = predictor.get_input_handle(predictor.get_input_names()[0])
        handle.reshape(x.shape)
        handle.copy_from_cpu(x)
        predictor.run()
        y = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
        ref = outputs(m, x)
        assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-5


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


def test_short_training_lowers_the_loss_and_resume_is_exact(synthetic_root, tmp_path):
    straight = tmp_path / "straight"
    T.train(tiny_run_args(synthetic_root, straight, "--epochs", "4"))
    losses = [r["loss"] for r in read_metrics(straight)]
    assert losses[-1] < 0.8 * losses[0]
    assert "AP" in read_metrics(straight)[-1] and (straight / "best.pdparams").exists()

    interrupted = tmp_path / "interrupted"
    T.train(tiny_run_args(synthetic_root, interrupted, "--epochs", "2"))
    T.train(tiny_run_args(synthetic_root, interrupted, "--epochs", "4",
                          "--resume", str(interrupted / "last.pdparams")))
    resumed = [r["loss"] for r in read_metrics(interrupted)]
    assert len(resumed) == 4
    np.testing.assert_allclose(resumed, losses, rtol=1e-5)  # same data order, same optimizer state


def test_nan_loss_stops_with_the_step_named_and_keeps_the_checkpoint(synthetic_root, tmp_path):
    T.train(tiny_run_args(synthetic_root, tmp_path, "--epochs", "1"))
    good, steps = (tmp_path / "last.pdparams").read_bytes(), read_metrics(tmp_path)[0]["step"]
    with pytest.raises(SystemExit, match=rf"loss became nan at step {steps} \(epoch 2, batch 0\)"):
        T.train(tiny_run_args(synthetic_root, tmp_path, "--epochs", "2", "--loss-scale", "nan",
                              "--resume", str(tmp_path / "last.pdparams")))
    assert (tmp_path / "last.pdparams").read_bytes() == good


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
    teacher = distill.build_teacher("lite_hrnet_18", str(tmp_path / "teacher.pdparams"), 17, "eval")
    assert not teacher.training and all(p.stop_gradient for p in teacher.parameters())
    assert distill.build_teacher("lite_hrnet_18", str(tmp_path / "teacher.pdparams"), 17, "train").training
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
