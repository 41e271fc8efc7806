"""
Train HRNet / Lite-HRNet on a COCO-format keypoint dataset: one process per device, one visible loop.

    python train.py                                   # teaching default: synthetic data, small model, CPU, minutes
    python train.py --data data/coco --model hrnet_w32 --input-size 256x192          # the paper's recipe
    python -m paddle.distributed.launch --gpus 0,1,2,3,4,5,6,7 train.py --data data/coco --model hrnet_w32
    python train.py --benchmark --model hrnet_w32                    # training samples/s (README, Speed)

Recipes (REFERENCE: HRNet's yaml, Lite-HRNet's mmpose config) fill every hyperparameter flag left unset.

The run folder (--out, default runs/<model>/): last.pdparams after every epoch (model, record, optimizer, epoch,
step, best AP and the run's flags: --resume continues exactly, flags left out taking the run's values) and
best.pdparams by val AP, each written to a temporary file and renamed; metrics.jsonl (loss, lr, the ten COCO
numbers per evaluation) and steps.jsonl (mean loss and lr per progress line), started anew by a fresh run and
continued by --resume; curves.png, learning.jpg and predictions.jpg; launch/, the per-rank logs of a run that
started its own processes.

Faults never cost the run's work: a NaN or infinite loss or gradient (checked before every update) or weight or
BatchNorm statistic (checked before every save) stops the run in one line naming the step, and no checkpoint with
a non-finite value is written; unreadable images are skipped and counted; Ctrl-C or SIGTERM stop with one line
naming the checkpoint to --resume; DataLoader workers end with their process (Linux's parent-death signal).
"""
import os
import sys
import warnings

if "--verbose" not in sys.argv:  # Paddle's C++ log lines (e.g. "PIR not support input out tensor"), read at import
    os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time note about C++ extensions
warnings.filterwarnings("ignore", message=".*always track global mean and variance.*")  # Paddle 3 BN note

import argparse
import contextlib
import hashlib
import io
import json
import math
import socket
import statistics
import subprocess
import time

import cv2
import numpy as np
import paddle
import paddle.distributed as dist

from data import (PIXEL_STD, SYNTHETIC_TRAIN_IMAGES, COCOKeypointDataset, HelpFormatter, augmentation_defaults,
                  crop_to_bgr, data_loader, draw_learning, draw_poses, image_grid, make_synthetic_dataset,
                  parse_input_size, progress_printer, read_image_bgr, resolve_path_or_url, run_script,
                  write_image_atomically)
from evaluate import STAT_NAMES, evaluate_model, heatmaps_to_keypoints
from model import (MODEL_NAMES, DepthwiseConv2D, build_from_checkpoint, build_model, final_layer_name, is_qat_model,
                   load_weights, model_record, read_checkpoint, read_paddle_file, save_checkpoint, set_device)

HERE = os.path.dirname(os.path.abspath(__file__))
SYNTHETIC_DIR = os.path.join(HERE, "data", "synthetic")

RECIPES = {
    # HRNet (pose_hrnet w32/w48_256x192_adam_lr1e-3.yaml): Adam 1e-3, x0.1 at 170 and 200 of 210 epochs,
    # 32 images per GPU on 4 GPUs, the loss's 0.5 factor, ImageNet-pretrained backbone (--pretrained).
    "hrnet": dict(model="hrnet_w32", input_size="256x192", epochs=210, milestones=[170, 200], lr=1e-3,
                  warmup_steps=0, batch_size=32, loss_scale=0.5, eval_every=10, schedule="step", udp=False,
                  decode="default", dark_kernel=3),
    # Lite-HRNet (litehrnet_*_coco_256x192.py): Adam 2e-3 with 500 linear warmup steps, 64 per GPU, from scratch.
    "lite_hrnet": dict(model="lite_hrnet_18", input_size="256x192", epochs=210, milestones=[170, 200], lr=2e-3,
                       warmup_steps=500, batch_size=64, loss_scale=1.0, eval_every=10, schedule="step", udp=False,
                       decode="default", dark_kernel=3),
    # The zero-download teaching run on the built-in synthetic stick figures, sized for a lesson (README,
    # Training): three passes over its training images in two processes of 8 crops, the lr dropping for the last
    # quarter, one evaluation at the end, decoded with DARK. AP follows the steps taken: smaller batches and more
    # passes over fewer images won, a shorter warmup lost.
    "synthetic": dict(model="lite_hrnet_18", input_size="128x96", epochs=3, schedule="step", milestones=[2.25],
                      lr=4e-3, warmup_steps=50, batch_size=8, loss_scale=1.0, eval_every=3, udp=False,
                      decode="dark", dark_kernel=7),
}


def joints_mse_loss(heatmaps, targets, target_weight, scale=0.5, ohkm_topk=0):
    """MSE between predicted and target heatmaps, joints weighted by visibility (HRNet's JointsMSELoss).
    With ohkm_topk > 0, only each sample's k hardest joints count (online hard keypoint mining)."""
    weight = target_weight.unsqueeze(-1)  # (N, K, 1, 1)
    # square + a mean over one flattened axis: the same numbers as `** 2` and .mean(axis=[2, 3]), whose
    # backward kernels are ~10x slower on CPU
    per_joint = scale * paddle.square((heatmaps - targets) * weight).flatten(2).mean(axis=2)  # (N, K)
    if ohkm_topk:
        return paddle.topk(per_joint, ohkm_topk, axis=1)[0].mean()
    return per_joint.mean()


def learning_rate(args, epoch, step):
    """Step decay by 10x at each milestone, or a cosine from lr to 0 over the run (--schedule cosine), times a
    linear warmup from 0.001x over the first steps. epoch counts epochs done, with a fraction within the current
    one (so a milestone may be 0.75)."""
    if args.schedule == "cosine":
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
    else:
        lr = args.lr * 0.1 ** sum(epoch >= m for m in args.milestones)
    if step < args.warmup_steps:
        lr *= 0.001 + (1 - 0.001) * step / args.warmup_steps
    return lr


def parameter_checksum(model):
    """Same on every rank when data-parallel training keeps the replicas in sync."""
    digest = hashlib.md5()
    for name, p in sorted(model.state_dict().items()):
        if not p.stop_gradient:
            digest.update(p.numpy().tobytes())
    return digest.hexdigest()


def format_seconds(s):
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def build_datasets(args):
    aug = augmentation_defaults(args.model)
    for key in aug:
        if getattr(args, key) is not None:
            aug[key] = getattr(args, key)
    size = parse_input_size(args.input_size)
    common = dict(input_size=size, sigma=args.target_sigma, udp=args.udp, sigmas_file=args.oks_sigmas,
                  flip_pairs=args.flip_pairs, seed=args.seed)
    train_set = COCOKeypointDataset(os.path.join(args.data, "annotations", "person_keypoints_train2017.json"),
                                    os.path.join(args.data, "train2017"), train=True, **aug, **common)
    val_set = COCOKeypointDataset(os.path.join(args.data, "annotations", "person_keypoints_val2017.json"),
                                  os.path.join(args.data, "val2017"), train=False, boxes=args.val_boxes,
                                  **common)
    return train_set, val_set


def heatmap_loss(args):
    """The loss of a plain run; distill.py passes its own with the same signature."""
    def loss_fn(heatmaps, images, targets, target_weight):
        return joints_mse_loss(heatmaps, targets, target_weight, args.loss_scale, args.ohkm)
    return loss_fn


def non_finite_weights(model):
    """Names of the state-dict tensors (weights and BatchNorm statistics) holding a NaN or inf."""
    return [name for name, value in model.state_dict().items() if not paddle.isfinite(value).all()]


def training_step(net, optimizer, loss_fn, images, targets, target_weight, scaler=None, amp_level="O1"):
    """One update: forward, loss, backward, optimizer step. Returns the loss as a float; a NaN or infinite loss
    returns before the weights are touched, so the caller can stop on the last good weights, and a NaN or infinite
    gradient raises FloatingPointError before it reaches them (a diverging run can keep a finite loss while its
    gradients overflow). With AMP the loss scaler skips such steps itself, as it should in float16."""
    with paddle.amp.auto_cast(enable=scaler is not None, level=amp_level):
        heatmaps = net(images)
    loss = loss_fn(heatmaps.astype("float32"), images, targets, target_weight)
    loss_value = float(loss)
    if not math.isfinite(loss_value):
        return loss_value
    if scaler:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if not all_finite([p.grad for p in net.parameters() if p.grad is not None]):
            optimizer.clear_grad()
            raise FloatingPointError("gradients became non-finite")
        optimizer.step()
    optimizer.clear_grad()
    return loss_value


def freeze_backbone(model):
    """--freeze-backbone: every parameter but the final layer's stops learning. Returns the parameters still
    learning; keep_backbone_statistics must follow every model.train()."""
    head = {id(p) for p in dict(model.named_sublayers())[final_layer_name(model)].parameters()}
    for p in model.parameters():
        p.stop_gradient = p.stop_gradient or id(p) not in head
    return [p for p in model.parameters() if not p.stop_gradient]


def keep_backbone_statistics(model):
    """A frozen backbone's BatchNorms normalise with the running statistics they were trained with and leave
    them as they are: batch statistics of a few hundred new images would shift the features the head is fitted to."""
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            layer.eval()


def train(args, model=None, loss_fn=None, datasets=None):
    """The training run. quantize.py passes a prepared (fake-quantized) model, distill.py a loss_fn(heatmaps,
    images, targets, target_weight) that adds the teacher's term; datasets = (train, val) if already built.
    Returns (model, val_set, best AP)."""
    with fresh_parameter_names():
        world, rank = start_process(args)
        log = print if rank == 0 else (lambda *a, **k: None)
        paddle.seed(args.seed)
        train_set, val_set = datasets or build_datasets(args)
        loss_fn = loss_fn or heatmap_loss(args)
        model, optimizer, (start_epoch, step, best_ap) = prepare_model(args, model, train_set.info, log)
        # what every checkpoint of this run says it is: a script given one of them needs no flag to rebuild the model
        record = model_record(args.model, train_set.input_size, train_set.info, args.udp, is_qat_model(model),
                              args.decode, args.dark_kernel)
        if args.amp == "O2":  # float16 weights with float32 master copies; checkpoints stay float32
            model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level="O2",
                                                   save_dtype="float32")
        net = paddle.DataParallel(model) if world > 1 else model  # broadcasts rank 0's weights
        scaler = paddle.amp.GradScaler() if args.amp else None
        # one shuffling per epoch shared by all ranks; each rank takes its own slice
        sampler = paddle.io.DistributedBatchSampler(train_set, batch_size=args.batch_size, shuffle=True,
                                                    drop_last=True)
        loader = data_loader(train_set, args.workers, batch_sampler=sampler)
        steps_per_epoch = check_run_size(args, train_set, val_set, len(sampler), world, log)
        progress = Progress(args, rank, world, step, args.epochs * steps_per_epoch, val_set, log)

        for epoch in range(start_epoch, args.epochs):
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            training_mode(net, args.freeze_backbone)
            for i, (images, targets, target_weight, indices) in enumerate(loader):
                lr = learning_rate(args, epoch + i / steps_per_epoch, step)
                optimizer.set_lr(lr)
                loss = checked_step(args, net, optimizer, loss_fn, images, targets, target_weight, scaler,
                                    (step, epoch, i))
                step += 1
                progress.after_step(model, epoch, i, step, loss, lr, len(images), int((indices.numpy() < 0).sum()))
            best_ap = end_epoch(args, model, optimizer, record, val_set, progress, epoch, step, best_ap, world)
        progress.finish(model)
    return model, val_set, best_ap


def start_process(args):
    """Device, CPU threads and, in a process of paddle.distributed.launch, the process group: (world, rank)."""
    set_device(args.device)
    use_cpu_threads(args.threads)
    world, rank = dist.get_world_size(), dist.get_rank()
    if world > 1:
        init_parallel_env_quietly(args.verbose)
    if args.amp and not paddle.is_compiled_with_cuda():
        if rank == 0:
            print(f"--amp {args.amp}: ignored on CPU (Paddle's CPU AMP computes in float32 anyway)")
        args.amp = None
    return world, rank


def prepare_model(args, model, info, log):
    """The network (built unless given; --weights / --pretrained / --resume loaded) and its Adam, with the
    position to start from: (model, optimizer, (epoch, step, best AP))."""
    if model is None:
        model = build_model(args.model, info.num_joints)
        if args.weights and not args.resume:  # another keypoint set: the joints both name alike are carried
            load_weights(model, args.weights, log=log, keypoint_names=info.names, flag="--weights")
        elif args.pretrained and not args.resume:
            load_weights(model, args.pretrained, pretrained=True, log=log, flag="--pretrained")
    parameters = freeze_backbone(model) if args.freeze_backbone else model.parameters()
    optimizer = paddle.optimizer.Adam(learning_rate=args.lr, parameters=parameters,
                                      weight_decay=args.weight_decay or None)
    start = (0, 0, -1.0)
    if args.resume:
        start = resume(args.resume, model, optimizer, args.model, info, log)
    return model, optimizer, start


def check_run_size(args, train_set, val_set, steps_per_epoch, world, log):
    """Steps per epoch, after the checks that need the data and the first line that describes the run."""
    if steps_per_epoch == 0:
        raise SystemExit(f"error: --batch-size {args.batch_size} x {world} processes is larger than the "
                         f"{len(train_set)} training samples")
    if args.ohkm > train_set.info.num_joints:
        raise ValueError(f"--ohkm {args.ohkm}: more than the dataset's {train_set.info.num_joints} keypoints")
    log(f"{args.model} {args.input_size}, {len(train_set)} train / {len(val_set)} val samples, "
        f"{world} process(es) x batch {args.batch_size}, {steps_per_epoch} steps per epoch, {args.epochs} epochs")
    return steps_per_epoch


def training_mode(net, frozen_backbone):
    net.train()
    if frozen_backbone:
        keep_backbone_statistics(net)


def stop_run(out, what, step, epoch, batch):
    """A fault stops the run in one line that names where, and the checkpoint it leaves."""
    last = os.path.join(out, "last.pdparams")
    kept = f"The last good checkpoint is {last}" if os.path.exists(last) else "No checkpoint was written yet"
    raise SystemExit(f"error: {what} at step {step} (epoch {epoch + 1}, batch {batch}); stopping. {kept}")


def checked_step(args, net, optimizer, loss_fn, images, targets, target_weight, scaler, where):
    """training_step, stopping the run at a non-finite loss or gradient; where = (step, epoch, batch)."""
    try:
        loss = training_step(net, optimizer, loss_fn, images, targets, target_weight, scaler, args.amp or "O1")
    except FloatingPointError as err:
        stop_run(args.out, err, *where)
    if not math.isfinite(loss):
        stop_run(args.out, f"loss became {loss}", *where)
    return loss


class Progress:
    """What a run shows while it trains: a line every --log-every steps (loss, lr, samples/s, ETA) and its point
    in steps.jsonl (the curves), the epoch's mean loss and skipped images, and on rank 0 learning.jpg."""

    def __init__(self, args, rank, world, step, total_steps, val_set, log):
        self.args, self.rank, self.world, self.total_steps, self.log = args, rank, world, total_steps, log
        self.run_start, self.run_start_step = time.time(), step
        if rank == 0 and not args.resume:  # a new run in an old run folder starts its metrics and curves afresh
            for name in ("metrics.jsonl", "steps.jsonl"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(args.out, name))
        self.learning = LearningPicture(args, val_set, total_steps) if rank == 0 and args.snapshots else None
        self.new_epoch()

    def new_epoch(self):
        self.epoch_loss, self.epoch_steps, self.skipped = 0.0, 0, 0
        self.window_start, self.window_samples, self.window_loss, self.window_steps = time.time(), 0, 0.0, 0

    def after_step(self, model, epoch, i, step, loss, lr, batch_size, skipped):
        self.epoch_loss, self.epoch_steps, self.skipped = self.epoch_loss + loss, self.epoch_steps + 1, \
            self.skipped + skipped
        self.window_loss, self.window_steps = self.window_loss + loss, self.window_steps + 1
        self.window_samples += batch_size * self.world
        if self.learning:
            self.learning.after_step(model, step, loss)
        # every --log-every steps of the run, not of the epoch: a line at each epoch's end would leave one-step
        # windows, the curve's noisiest points, around every epoch boundary
        if self.rank != 0 or not ((step - 1) % self.args.log_every == 0 or step == self.total_steps):
            return
        steps_per_epoch = self.total_steps // self.args.epochs
        rate = self.window_samples / max(time.time() - self.window_start, 1e-9)
        eta = (time.time() - self.run_start) / max(step - self.run_start_step, 1) * (self.total_steps - step)
        self.log(f"epoch {epoch + 1}/{self.args.epochs} step {i + 1}/{steps_per_epoch} loss {loss:.6f} "
                 f"lr {lr:.2e} {rate:.1f} samples/s ETA {format_seconds(eta)}", flush=True)
        os.makedirs(self.args.out, exist_ok=True)
        with open(os.path.join(self.args.out, "steps.jsonl"), "a") as f:  # the curves' points: window means
            f.write(json.dumps(dict(step=step, loss=self.window_loss / self.window_steps, lr=lr)) + "\n")
        self.window_start, self.window_samples, self.window_loss, self.window_steps = time.time(), 0, 0.0, 0

    def finish(self, model):
        if self.learning and self.learning.snapshots:
            self.log(f"{self.learning.path}: {len(self.learning.snapshots)} snapshots of one val crop, "
                     f"{self.learning.seconds:.1f} s in all")
        print(f"rank {self.rank}: parameter checksum {parameter_checksum(model)}", flush=True)


def end_epoch(args, model, optimizer, record, val_set, progress, epoch, step, best_ap, world):
    """After each epoch: the fault checks, the evaluation when due, best.pdparams, last.pdparams (before anything
    optional), metrics.jsonl, predictions.jpg and curves.png. Returns the best AP so far."""
    rank, log = dist.get_rank(), progress.log
    if progress.skipped:
        log(f"epoch {epoch + 1}: skipped {progress.skipped} unreadable images")
    bad = non_finite_weights(model)  # e.g. BatchNorm statistics, which no gradient passes: never saved
    if bad:
        stop_run(args.out, f"weights became non-finite ({len(bad)} tensors, e.g. {bad[0]})", step - 1, epoch,
                 progress.epoch_steps - 1)
    metrics = dict(epoch=epoch + 1, step=step, loss=progress.epoch_loss / max(progress.epoch_steps, 1),
                   lr=optimizer.get_lr(), skipped=progress.skipped)
    progress.new_epoch()
    results = None
    if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
        if world > 1:  # every rank predicts a share of val with rank 0's model (its own BatchNorm statistics)
            share_buffers(model)
        # inference keeps no activations for a backward pass: batches of 32 even after small training ones
        results, stats = evaluate_model(model, val_set, batch_size=max(args.batch_size, 32), flip=args.flip,
                                        decode=args.decode, dark_kernel=args.dark_kernel, num_workers=args.workers,
                                        log=log, data_parallel=world > 1)
        metrics.update(stats)
        log("  ".join(f"{k} {stats[k]:.3f}" for k in STAT_NAMES))
        if stats["AP"] > best_ap:
            best_ap = stats["AP"]
            if rank == 0:
                save_checkpoint(dict(model=model.state_dict(), record=record), os.path.join(args.out, "best.pdparams"))
    if rank != 0:
        return best_ap
    save_checkpoint(dict(model=model.state_dict(), record=record, optimizer=optimizer.state_dict(), epoch=epoch + 1,
                         step=step, best_ap=best_ap, args=vars(args)), os.path.join(args.out, "last.pdparams"))
    with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(metrics) + "\n")
    if results is not None:
        unreadable = save_prediction_picture(results, val_set, os.path.join(args.out, "predictions.jpg"))
        if unreadable:
            log(f"predictions.jpg: skipped {unreadable} unreadable val images")
        if not save_training_curves(args.out, progress.total_steps):
            log(f"could not write {os.path.join(args.out, 'curves.png')}")
    return best_ap


class LearningPicture:
    """runs/<model>/learning.jpg: one val crop as the network sees it at --snapshots points of the run, left to
    right, redrawn at each: the predicted heatmaps of all joints as one map, the skeleton decoded from them, the
    step and the mean training loss since the previous snapshot. Each snapshot is one crop's forward pass in eval
    mode. The crop: the val sample with the most labelled joints (the largest of those; the first of equals). A
    resumed run draws the snapshots after the step it resumed at."""

    def __init__(self, args, val_set, total_steps):
        labelled = (val_set.joints[:, :, 2] > 0).sum(axis=1)
        index = max(range(len(val_set)), key=lambda i: (labelled[i], val_set.areas[i], -i))
        self.image = val_set[index][0][None]
        self.skeleton, self.flip_pairs = val_set.info.skeleton, val_set.info.flip_pairs
        self.decode, self.dark_kernel, self.udp = args.decode, args.dark_kernel, args.udp
        self.frozen, self.amp = args.freeze_backbone, args.amp
        self.due = sorted({math.ceil(total_steps * (k + 1) / args.snapshots) for k in range(args.snapshots)})
        self.path, self.snapshots, self.seconds = os.path.join(args.out, "learning.jpg"), [], 0.0
        self.losses = []

    def after_step(self, model, step, loss):
        self.losses.append(loss)
        if step not in self.due:
            return
        start = time.time()
        model.eval()
        with paddle.no_grad(), paddle.amp.auto_cast(enable=self.amp is not None, level=self.amp or "O1"):
            heatmaps = model(paddle.to_tensor(self.image)).astype("float32").numpy()
        training_mode(model, self.frozen)
        height, width = self.image.shape[2:]
        keypoints, scores = heatmaps_to_keypoints(heatmaps, np.array([[width / 2, height / 2]]),
                                                  np.array([[width / PIXEL_STD, height / PIXEL_STD]]),
                                                  self.decode, self.dark_kernel, self.udp)
        label = f"step {step}  loss {statistics.mean(self.losses):.2g}"
        self.snapshots.append((label, heatmaps[0], np.concatenate([keypoints[0], scores[0]], axis=1)))
        self.losses = []
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        write_image_atomically(self.path, draw_learning(crop_to_bgr(self.image[0]), self.snapshots, self.skeleton,
                                                        self.flip_pairs, columns=len(self.due)))
        self.seconds += time.time() - start


def load_training_checkpoint(path):
    """A last.pdparams as a dict (of tensors, as paddle.load gives it); a one-line ValueError for anything else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume {path}: no such file")
    checkpoint = read_paddle_file(path, f"--resume {path}", return_numpy=False)
    if not isinstance(checkpoint, dict) or not all(k in checkpoint for k in ("model", "optimizer", "epoch", "step")):
        raise ValueError(f"--resume {path}: a weights file without optimizer state and position (best.pdparams?); "
                         f"resume from a run's last.pdparams, or start a new run from these weights with --weights")
    return checkpoint


def resume(path, model, optimizer, model_name, info, log):
    """Load a last.pdparams into model and optimizer, all or nothing; returns (epoch, step, best AP).
    Anything else (a weights file, another model's checkpoint) is a one-line error before any work."""
    checkpoint = load_training_checkpoint(path)
    state, record = read_checkpoint(path, "--resume")
    name = model_name if record is None else record["model"]
    try:  # the same all-or-nothing check as --weights: network, keypoints, every key and shape
        build_from_checkpoint(state, record, f"--resume {path}", model_name, info=info, log=log)
        optimizer.set_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError, AssertionError) as err:
        raise ValueError(f"--resume {path} ({name}) does not fit this run's model: {err}") from None
    model.set_state_dict(checkpoint["model"])
    log(f"resumed {path}: epoch {checkpoint['epoch']}, step {checkpoint['step']}, best AP {checkpoint['best_ap']:.3f}")
    return checkpoint["epoch"], checkpoint["step"], checkpoint["best_ap"]


def read_jsonl_by_step(path):
    """The records of a run's .jsonl file, one per step, the last written winning: a resumed run rewrites the
    steps after its last finished epoch."""
    by_step = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def nice_ticks(low, high, count=4):
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def draw_panel(canvas, box, xs, ys, x_range, title, colour, dots=False):
    """One curve in the rectangle box = (x0, y0, x1, y1) of canvas: frame, y ticks with labels, the title in
    the top-left corner; dots=True also marks and labels every point (few points, e.g. one per evaluation)."""
    x0, y0, x1, y1 = box
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(canvas, (x0, y0), (x1, y1), (90, 90, 90), 1)
    if len(ys):
        draw_curve(canvas, box, xs, ys, x_range, colour, dots)
    (text_width, _), _ = cv2.getTextSize(title, font, 0.45, 1)
    cv2.rectangle(canvas, (x0 + 1, y0 + 1), (x0 + text_width + 10, y0 + 22), (255, 255, 255), -1)
    cv2.putText(canvas, title, (x0 + 6, y0 + 16), font, 0.45, colour, 1, cv2.LINE_AA)


def draw_curve(canvas, box, xs, ys, x_range, colour, dots):
    """The y ticks and the polyline of draw_panel, the y range being the data's with a tenth of margin."""
    x0, y0, x1, y1 = box
    grey, font = (200, 200, 200), cv2.FONT_HERSHEY_SIMPLEX
    low, high = min(ys), max(ys)
    pad = (high - low) * 0.1 or abs(high) * 0.1 or 1.0
    low, high = low - pad, high + pad

    def to_pixel(x, y):
        px = x0 + (x - x_range[0]) / max(x_range[1] - x_range[0], 1e-9) * (x1 - x0)
        return round(px), round(y1 - (y - low) / (high - low) * (y1 - y0))
    for tick in nice_ticks(low, high):
        _, py = to_pixel(x_range[0], tick)
        cv2.line(canvas, (x0, py), (x1, py), grey, 1)
        cv2.putText(canvas, f"{tick:.3g}", (4, py + 4), font, 0.35, (60, 60, 60), 1, cv2.LINE_AA)
    points = np.array([to_pixel(x, y) for x, y in zip(xs, ys)], np.int32)
    cv2.polylines(canvas, [points], False, colour, 2, cv2.LINE_AA)
    if dots:
        for (px, py), y in zip(points, ys):
            cv2.circle(canvas, (int(px), int(py)), 4, colour, -1, cv2.LINE_AA)
            cv2.putText(canvas, f"{y:.3f}", (min(int(px) - 20, x1 - 46), int(py) - 8), font, 0.4, colour, 1,
                        cv2.LINE_AA)


def draw_training_curves(steps, evaluations, total_steps, width=640, panel_height=150):
    """Loss, learning rate and val AP against training steps: three stacked panels on one step axis.
    steps: records with step, loss and lr (one per progress line); evaluations: records with step and AP."""
    left, right, top, gap, bottom = 56, 16, 10, 8, 34
    canvas = np.full((top + 3 * panel_height + 2 * gap + bottom, width, 3), 255, np.uint8)
    x_range = (0, max([total_steps] + [r["step"] for r in steps + evaluations]))
    panels = (([r["step"] for r in steps], [r["loss"] for r in steps], "training loss", (200, 80, 0), False),
              ([r["step"] for r in steps], [r["lr"] for r in steps], "learning rate", (0, 140, 0), False),
              ([r["step"] for r in evaluations], [r["AP"] for r in evaluations], "val AP", (0, 0, 200), True))
    for i, (xs, ys, title, colour, dots) in enumerate(panels):
        y0 = top + i * (panel_height + gap)
        draw_panel(canvas, (left, y0, width - right, y0 + panel_height), xs, ys, x_range, title, colour, dots)
    y = top + 3 * panel_height + 2 * gap
    for tick in nice_ticks(*x_range):
        px = round(left + (tick - x_range[0]) / max(x_range[1] - x_range[0], 1e-9) * (width - right - left))
        cv2.line(canvas, (px, y), (px, y + 4), (60, 60, 60), 1)
        cv2.putText(canvas, f"{tick:g}", (px - 8, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (60, 60, 60), 1,
                    cv2.LINE_AA)
    cv2.putText(canvas, "training step", (width // 2 - 40, y + 30), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1,
                cv2.LINE_AA)
    return canvas


def save_training_curves(out, total_steps):
    """runs/<model>/curves.png from the run's steps.jsonl and metrics.jsonl; False if it cannot be written."""
    steps = read_jsonl_by_step(os.path.join(out, "steps.jsonl"))
    evaluations = [r for r in read_jsonl_by_step(os.path.join(out, "metrics.jsonl")) if "AP" in r]
    return write_image_atomically(os.path.join(out, "curves.png"),
                                  draw_training_curves(steps, evaluations, total_steps))


def save_prediction_picture(results, val_set, path, num_images=8):
    """The latest evaluation's skeletons on the first val images: the quickest look at what the model learned.
    Optional, so it never stops a run: unreadable images are left out, and their number returned."""
    image_files = {}
    for i in range(len(val_set)):  # the first num_images images, in sample order
        if len(image_files) == num_images:
            break
        image_files.setdefault(val_set.image_ids.item(i), val_set.image_file(i))
    drawings, unreadable = [], 0
    for image_id, image_file in list(image_files.items())[:num_images]:
        try:
            image = read_image_bgr(image_file)
        except (ValueError, FileNotFoundError):
            unreadable += 1
            continue
        people = [r for r in results if r["image_id"] == image_id]
        drawings.append(draw_poses(image, people, val_set.info.skeleton, val_set.info.flip_pairs))
    if drawings:
        write_image_atomically(path, image_grid(drawings))
    return unreadable


def benchmark(args, warmup=3):
    """--benchmark STEPS: samples/s of the training step (forward, loss, backward, Adam) on one batch kept in
    memory, the median of STEPS steps after warm-up; the data loader is timed on its own. On CPU the step is
    timed alternately with --threads and with one thread per core, and for Lite-HRNet also with Paddle's
    depthwise op on every map (model.DepthwiseConv2D), so that the rates can be compared."""
    set_device(args.device)
    train_set, _ = build_datasets(args)
    # just the batches timed, so that the loader ends as it should (workers and reader thread shut down)
    picked = paddle.randperm(len(train_set)).numpy()[:(args.benchmark + 1) * args.batch_size]
    loader = data_loader(paddle.io.Subset(train_set, picked.tolist()), args.workers, batch_size=args.batch_size,
                         drop_last=True)
    batches = iter(loader)
    images, targets, target_weight, _ = next(batches)  # the first batch also waits for the workers to start
    start, loaded = time.perf_counter(), 0
    for loaded, _ in enumerate(batches, 1):
        pass
    loading = loaded * args.batch_size / (time.perf_counter() - start) if loaded else float("nan")

    paddle.seed(args.seed)
    model = build_model(args.model, train_set.info.num_joints)
    optimizer = paddle.optimizer.Adam(learning_rate=args.lr, parameters=model.parameters())
    loss_fn = heatmap_loss(args)
    on_cpu = paddle.device.get_device() == "cpu"
    matmul_positions = DepthwiseConv2D.matmul_positions
    variants = {"": (args.threads, matmul_positions)}  # label -> (threads, DepthwiseConv2D.matmul_positions)
    if on_cpu:
        variants = {f" with {n} thread(s){' (--threads)' if n == args.threads else ''}": (n, matmul_positions)
                    for n in sorted({args.threads, os.cpu_count() or 1})}
        if any(isinstance(layer, DepthwiseConv2D) for layer in model.sublayers()):
            variants[f" with {args.threads} thread(s), Paddle's depthwise op on every map"] = (args.threads, 0)
    times = {label: [] for label in variants}
    update = progress_printer(f"benchmark {args.model}", warmup + args.benchmark, "rounds")
    for i in range(warmup + args.benchmark):
        update(i)
        for label, (threads, positions) in variants.items():
            use_cpu_threads(threads)
            DepthwiseConv2D.matmul_positions = positions
            start = time.perf_counter()
            training_step(model, optimizer, loss_fn, images, targets, target_weight)
            if i >= warmup:
                times[label].append(time.perf_counter() - start)
    update(warmup + args.benchmark, final=True)
    use_cpu_threads(args.threads)
    DepthwiseConv2D.matmul_positions = matmul_positions
    print(f"benchmark: {args.model} {args.input_size}, batch {args.batch_size}, {paddle.device.get_device()}, "
          f"median of {args.benchmark} steps after {warmup} warm-up")
    for label in variants:
        step_time = statistics.median(times[label])
        print(f"training step (forward, loss, backward, Adam){label}: {args.batch_size / step_time:.2f} "
              f"samples/s, {step_time:.3f} s/step")
    print(f"data loading ({args.workers} workers): {loading:.1f} samples/s")


def in_range(kind, low, high=math.inf, low_open=False):
    """An argparse type: a number of `kind` in [low, high] ((low, high] with low_open), else an argparse error
    ('argument --epochs: expected an integer >= 1, got 0'), before any work is done."""
    noun = "an integer" if kind is int else "a number"
    bounds = f"{'>' if low_open else '>='} {low:g}" + ("" if high == math.inf else f" and <= {high:g}")

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"expected {noun} {bounds}, got {text}")
        return value
    return parse


def build_parser(description=__doc__.split("\n\n")[0].strip(), recipes=RECIPES, run_name="{model}"):
    """Every training flag; distill.py and quantize.py add theirs to it, with their recipes and run folder name."""
    def recipe_default(key):
        return " (default: " + ", ".join(f"{name} {recipe[key]}" for name, recipe in recipes.items()) + ")"

    positive_int, count = in_range(int, 1), in_range(int, 0)

    def odd_kernel(text):  # DARK's blur needs a centre pixel: an even kernel would stop the run at its evaluation
        value = positive_int(text)
        if value % 2 == 0:
            raise argparse.ArgumentTypeError(f"expected an odd number, got {value}")
        return value

    positive, non_negative, probability = in_range(float, 0, low_open=True), in_range(float, 0), in_range(float, 0, 1)
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("--data", default=None,
                   help="COCO-layout folder (annotations/, train2017/, val2017/); default: the built-in synthetic "
                        "set in data/synthetic (made on first use) with the quick 'synthetic' recipe")
    p.add_argument("--model", default=None, choices=MODEL_NAMES, help="network" + recipe_default("model"))
    p.add_argument("--input-size", default=None, help="input HxW, multiples of 32" + recipe_default("input_size"))
    p.add_argument("--out", default=None,
                   help=f"run folder for checkpoints and metrics (default: runs/{run_name.format(model='<model>')})")
    p.set_defaults(run_name=run_name)
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs" + recipe_default("epochs"))
    p.add_argument("--schedule", choices=("step", "cosine"), default=None,
                   help="learning rate: step (10x drops at the milestones) or cosine (to 0 at the last step)"
                        + recipe_default("schedule"))
    p.add_argument("--milestones", type=non_negative, nargs="+", default=None,
                   help="epochs where lr drops 10x with --schedule step (fractions allowed: 0.75)"
                        + recipe_default("milestones"))
    p.add_argument("--lr", type=positive, default=None,
                   help="Adam learning rate (per run, not per GPU)" + recipe_default("lr"))
    p.add_argument("--warmup-steps", type=count, default=None,
                   help="linear warmup steps from 0.001 x lr" + recipe_default("warmup_steps"))
    p.add_argument("--batch-size", type=positive_int, default=None, help="images per process (GPU)" + recipe_default("batch_size"))
    p.add_argument("--loss-scale", type=float, default=None,
                   help="JointsMSELoss factor: 0.5 in HRNet, 1 in mmpose" + recipe_default("loss_scale"))
    p.add_argument("--ohkm", type=count, default=0,
                   help="online hard keypoint mining: top-k joints per sample (0: off)")
    p.add_argument("--weight-decay", type=non_negative, default=0.0, help="L2 on Adam; off in the papers (hurts AP)")
    p.add_argument("--eval-every", type=positive_int, default=None,
                   help="evaluate on val every N epochs (and at the end)" + recipe_default("eval_every"))
    p.add_argument("--val-boxes", default="gt", help="'gt' or a COCO detection-results JSON for evaluation")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="flip test at evaluation")
    p.add_argument("--decode", choices=("default", "dark"), default=None,
                   help="heatmap decoding of the run's evaluations, recorded in its checkpoints for evaluate.py and "
                        "predict.py: default = argmax + quarter offset (the official), dark = DARK"
                        + recipe_default("decode"))
    p.add_argument("--dark-kernel", type=odd_kernel, default=None,
                   help="DARK's blur kernel, odd (PaddleDetection 3 at 64x48 heatmaps, mmpose 11)"
                        + recipe_default("dark_kernel"))
    p.add_argument("--target-sigma", type=positive, default=None,
                   help="width of the target heatmaps' Gaussians (default: 2 at 256x192, proportional to the height)")
    p.add_argument("--udp", action=argparse.BooleanOptionalAction, default=None,
                   help="unbiased data processing (UDP) targets and warps" + recipe_default("udp"))
    p.add_argument("--oks-sigmas", default=None,
                   help="JSON file with the list of OKS sigmas of a non-COCO keypoint set (for evaluation)")
    p.add_argument("--flip-pairs", nargs="+", default=None, metavar="LEFT,RIGHT",
                   help="joints swapped by a horizontal flip, as 0-based indices or names (e.g. 0,1 2,3), for "
                        "keypoint names without left/right (default: from the names; none found: no flip)")
    hrnet, lite = augmentation_defaults("hrnet"), augmentation_defaults("lite_hrnet")
    for key, kind, help_text in (("scale_factor", in_range(float, 0, 0.99), "random scale +- factor"),
                                 ("rot_factor", non_negative, "random rotation degrees"),
                                 ("rot_prob", probability, "probability of rotating"),
                                 ("half_body_prob", probability, "half-body probability"),
                                 ("num_joints_half_body", count, "visible joints needed for half-body"),
                                 ("flip_prob", probability, "horizontal flip probability")):
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                       help=f"{help_text} (default: hrnet {hrnet[key]}, lite_hrnet {lite[key]})")
    p.add_argument("--weights", default=None, help="initial weights (path or URL), any layout model.py reads")
    p.add_argument("--freeze-backbone", action="store_true", default=None,
                   help="train only the final layer, every other weight and BatchNorm statistic kept as --weights "
                        "has them: cheaper steps and no backbone to overfit, for a few dozen images or little time; "
                        "with a few hundred images full fine-tuning scored higher (README, Your own keypoints)")
    p.add_argument("--pretrained", default=None, help="ImageNet backbone (path or URL); classifier keys skipped")
    p.add_argument("--resume", default=None, help="a last.pdparams to continue exactly where it stopped")
    p.add_argument("--amp", nargs="?", const="O1", choices=("O1", "O2"), default=None,
                   help="mixed precision on GPUs: O1 (float16 where safe) or O2 (float16 weights, float32 master)")
    p.add_argument("--workers", type=count, default=2, help="data loading processes per training process")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per training process for Paddle's kernels (1: fastest on shared cores; README, Speed)")
    p.add_argument("--seed", type=count, default=0, help="seed for weights init and augmentation")
    p.add_argument("--log-every", type=positive_int, default=20, help="progress line every N steps")
    p.add_argument("--snapshots", type=count, default=8,
                   help="points of the run drawn in <out>/learning.jpg: one val crop's predicted heatmaps and "
                        "skeleton, one forward pass each (0: no picture)")
    p.add_argument("--device", default=None, help="cpu or gpu (default: gpu if Paddle has CUDA)")
    p.add_argument("--verbose", action="store_true", help="also show Paddle's and oneDNN's own log lines")
    return p


def settings_from_checkpoint(args, weights, flag="--weights"):
    """--resume: every flag left unset takes the interrupted run's value, so the run continues as it was
    started. weights written by this project: the network and input size they were trained at, unless given.
    flag: the option that named weights, for error messages."""
    if args.resume:
        for key, value in (load_training_checkpoint(args.resume).get("args") or {}).items():
            if getattr(args, key, False) is None:
                setattr(args, key, value)
    elif weights:
        _, record = read_checkpoint(resolve_path_or_url(weights, what=flag), flag)
        if record is not None:
            args.model = args.model or record["model"]
            args.input_size = args.input_size or "x".join(map(str, record["input_size"]))
            args.udp = args.udp or record["udp"]
            args.decode = args.decode or record.get("decode")  # files from before records said how to decode: unset
            args.dark_kernel = args.dark_kernel or record.get("dark_kernel")


def apply_recipe(args, recipes=RECIPES, weights=None, flag="--weights"):
    """Fill every flag left unset from the checkpoint being continued or started from (--resume, or weights:
    default --weights; see settings_from_checkpoint; flag: the option that named weights), then from the recipe
    of the data (synthetic) or of the model family."""
    try:
        settings_from_checkpoint(args, weights or args.weights, flag)
    except (ValueError, OSError) as err:
        raise SystemExit("error: " + " ".join(str(err).split()))
    if args.data is None:
        recipe = recipes["synthetic"]
        args.data = SYNTHETIC_DIR
        make_synthetic_set_once()
    else:
        recipe = recipes["lite_hrnet" if (args.model or "").startswith("lite") else "hrnet"]
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads < 1:
        raise SystemExit(f"error: --threads {args.threads}: expected 1 or more")
    args.out = args.out or os.path.join("runs", args.run_name.format(model=args.model))
    return args


def make_synthetic_set_once():
    """data/synthetic as the recipe trains on it: made on first use, and again if it holds another number of
    training images (a clone from before the set's size changed)."""
    made = os.path.join(SYNTHETIC_DIR, "annotations", "person_keypoints_{}2017.json")
    if os.path.exists(made.format("val")) and os.path.exists(made.format("train")):
        with open(made.format("train")) as f:
            count = len(json.load(f)["images"])
        if count == SYNTHETIC_TRAIN_IMAGES:
            return
        print(f"{SYNTHETIC_DIR} has {count} training images, the recipe {SYNTHETIC_TRAIN_IMAGES}: making it again",
              flush=True)
    else:
        print(f"generating the synthetic dataset in {SYNTHETIC_DIR} (once)", flush=True)
    make_synthetic_dataset(SYNTHETIC_DIR)


def processes_to_launch(args, synthetic):
    """How many training processes this command starts: --processes, else one per core for the synthetic teaching
    run on a CPU-only machine with 2+ cores (README, Training), else 1. A process started
    by paddle.distributed.launch is one of them already: 1."""
    if "PADDLE_TRAINER_ID" in os.environ or args.benchmark:
        return 1
    on_cpu = args.device == "cpu" or (args.device is None and not paddle.is_compiled_with_cuda())
    if args.processes is not None:
        if args.processes > 1 and not on_cpu:
            raise SystemExit(f"error: --processes {args.processes} starts CPU processes; for GPUs use "
                             f"python -m paddle.distributed.launch --gpus ... train.py")
        return args.processes
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 2 if synthetic and on_cpu and cores >= 2 else 1


def launch_processes(count, argv, out):
    """This command again in `count` processes through paddle.distributed.launch (gloo on CPU, as in README's
    Training section): rank 0's lines show here, every rank's log is in <out>/launch/. Returns the exit code."""
    command = [sys.executable, "-m", "paddle.distributed.launch", "--log_level", "WARNING", "--nproc_per_node",
               str(count), "--log_dir", os.path.join(out, "launch"), os.path.abspath(__file__), *argv]
    return subprocess.call(command, env=dict(os.environ, PYTHONWARNINGS="ignore:No ccache"))


def main(argv=None):
    p = build_parser()
    p.add_argument("--benchmark", type=int, nargs="?", const=10, default=0, metavar="STEPS",
                   help="instead of training, time STEPS training steps and the data loader "
                        "(batch 8 at 256x192 unless set)")
    p.add_argument("--processes", type=in_range(int, 1), default=None,
                   help="CPU training processes, one per core, started through paddle.distributed.launch (default: "
                        "2 for the synthetic teaching run on a CPU-only machine with 2+ cores, else 1)")
    args = p.parse_args(argv)
    if args.benchmark < 0:
        raise SystemExit(f"error: --benchmark {args.benchmark}: expected a number of steps, 1 or more")
    if args.benchmark:  # the setting of the speed figures in README unless given
        args.input_size, args.batch_size = args.input_size or "256x192", args.batch_size or 8
    synthetic = args.data is None
    args = apply_recipe(args)  # makes the synthetic set first: once, before any process is launched
    processes = processes_to_launch(args, synthetic)
    if processes > 1:
        print(f"{processes} training processes, one per core (--processes 1: one); rank 0 speaks, "
              f"all ranks log to {os.path.join(args.out, 'launch')}/", flush=True)
        code = launch_processes(processes, sys.argv[1:] if argv is None else list(argv), args.out)
        if code:
            raise SystemExit(code)
        return None
    try:
        if args.benchmark:
            return benchmark(args)
        model, val_set, best_ap = train(args)
    except (ValueError, OSError) as err:
        raise SystemExit("error: " + " ".join(str(err).split()))
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see data.run_script)
        last = os.path.join(args.out, "last.pdparams")
        raise SystemExit(f"stopped; {last} holds every finished epoch: --resume {last} continues the run"
                         if os.path.exists(last) else "stopped before the first epoch ended; nothing was saved")
    if dist.get_rank() == 0:
        print(f"checkpoints: {os.path.join(args.out, 'last.pdparams')}, {os.path.join(args.out, 'best.pdparams')}; "
              f"predictions drawn in {os.path.join(args.out, 'predictions.jpg')}")
        print(f"AP: {best_ap:.3f}")


# ----------------------------------------------------------------------------------------------------------
# Paddle 3.3.1 workarounds: what the loop above would not need with another engine (or version)

@contextlib.contextmanager
def fresh_parameter_names():
    """Adam names its moments from a per-process counter, and --resume finds them by name: count afresh per run
    (a second train() in one process, as the tests and quantize.py run it, would otherwise name them anew)."""
    with paddle.utils.unique_name.guard():
        yield


def init_parallel_env_quietly(verbose):
    """dist.init_parallel_env, whose banner on stderr lists every flag Paddle changed itself: --verbose shows it.
    A process other than rank 0 first waits for rank 0's store to listen (wait_for_store)."""
    if dist.get_rank() > 0 and os.environ.get("PADDLE_MASTER"):
        wait_for_store(os.environ["PADDLE_MASTER"])
    with contextlib.nullcontext() if verbose else contextlib.redirect_stderr(io.StringIO()):
        dist.init_parallel_env()


def wait_for_store(endpoint, timeout=60.0):
    """Until the TCP store at endpoint ('host:port', which rank 0 opens in init_parallel_env) accepts a
    connection, or timeout. Paddle's store client, when it comes first, retries only after 3 s, and both
    ranks wait for it: a third of the two-process runs started 3 s later for it."""
    host, port = endpoint.rsplit(":", 1)
    end = time.time() + timeout
    while time.time() < end:
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
            return
        time.sleep(0.02)


def use_cpu_threads(threads):
    """Intra-op threads of Paddle's CPU kernels (OpenMP and MKL), set at run time; no effect on a GPU run.
    Paddle's CPU training kernels gain little from a second thread and lose much when the cores are shared:
    on 2 busy cores one thread trained HRNet-W32 and Lite-HRNet 1.25-2.1x faster than two; on idle ones two
    threads gain only 3-15% (README, Speed)."""
    if paddle.device.get_device() == "cpu":
        paddle.base.core.set_num_threads(threads)


def share_buffers(model):
    """Rank 0's values of the tensors no gradient updates (BatchNorm statistics) in every rank: DataParallel keeps
    the weights identical, but each rank's BatchNorm averages its own crops."""
    for value in model.state_dict().values():
        if value.stop_gradient:
            dist.broadcast(value, src=0)


def all_finite(tensors):
    """True if no element of the tensors is NaN or inf: one concatenation, one check, one sync (0.5-0.7% of a
    lite_hrnet_18 training step at batch 32, 128x96, on one CPU thread)."""
    return bool(paddle.isfinite(paddle.concat([t.flatten() for t in tensors])).all())


if __name__ == "__main__":
    run_script(main)
