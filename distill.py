"""
Teacher -> student heatmap distillation: train a small pose network to match both the ground truth and a
frozen, stronger network's heatmaps (PaddleDetection's LiteHRNet-30 69.4 -> 69.9 AP recipe with an HRNet-W32 teacher).

    python distill.py --teacher-model hrnet_w32 --teacher hrnet_w32_256x192.pdparams \
                      --model lite_hrnet_30 --data data/coco --input-size 256x192

Every training flag of train.py works here too; the loop is train.py's, with this file's loss.
"""
import os
import sys
import warnings

if "--verbose" not in sys.argv:  # Paddle's C++ log lines (e.g. "PIR not support input out tensor"), read at import
    os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message=".*ccache.*")  # Paddle's import-time note about C++ extensions

import paddle

import train
from data import resolve_path_or_url, run_script
from model import MODEL_NAMES, build_from_checkpoint, read_checkpoint, set_device


def distillation_loss(student_heatmaps, teacher_heatmaps, target_weight, scale=0.5):
    """PaddleDetection's DistMSELoss: the heatmap MSE with the teacher's heatmaps as targets, joints weighted by the
    ground-truth visibility (so joints absent from the label teach nothing either way)."""
    return train.joints_mse_loss(student_heatmaps, teacher_heatmaps, target_weight, scale)


def build_teacher(path, state, record, name, info, bn_mode):
    """A frozen teacher from read_checkpoint's state and record of path, for data with keypoints info (name:
    only for checkpoints that do not say). bn_mode 'train' keeps PaddleDetection's choice: the teacher's BN uses batch
    statistics (and keeps updating its running ones); 'eval' uses the statistics it was trained with."""
    teacher, _ = build_from_checkpoint(state, record, f"--teacher {path}", name, info=info)
    for p in teacher.parameters():
        p.stop_gradient = True
    teacher.train() if bn_mode == "train" else teacher.eval()
    return teacher


def distill_loss_fn(args, teacher):
    def loss_fn(heatmaps, images, targets, target_weight):
        with paddle.no_grad():  # the teacher only provides targets: no gradient reaches it
            teacher_heatmaps = teacher(images)
        gt = train.joints_mse_loss(heatmaps, targets, target_weight, args.loss_scale, args.ohkm)
        return gt + args.distill_weight * distillation_loss(heatmaps, teacher_heatmaps, target_weight,
                                                            args.distill_scale)
    return loss_fn


def main(argv=None):
    p = train.build_parser(__doc__.split("\n\n")[1].strip(), run_name="{model}_distilled")
    p.add_argument("--teacher-model", choices=MODEL_NAMES,
                   help="teacher network; only for --teacher files that do not say (official / PaddleDetection ones)")
    p.add_argument("--teacher", required=True, help="teacher weights (path or URL), any layout model.py reads")
    p.add_argument("--teacher-bn", choices=("eval", "train"), default="eval",
                   help="teacher BatchNorm mode: eval (running statistics, the usual choice) or train (PaddleDetection's config)")
    p.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distillation term")
    p.add_argument("--distill-scale", type=float, default=0.5, help="the distillation MSE's factor (PaddleDetection: 0.5)")
    args = train.apply_recipe(p.parse_args(argv))
    try:
        set_device(args.device)
        teacher_path = resolve_path_or_url(args.teacher, what="--teacher")
        teacher_state, teacher_record = read_checkpoint(teacher_path, "--teacher")  # before any data work
        datasets = train.build_datasets(args)
        teacher = build_teacher(teacher_path, teacher_state, teacher_record, args.teacher_model, datasets[0].info,
                                args.teacher_bn)
        print(f"teacher {type(teacher).__name__} from {args.teacher} ({args.teacher_bn}-mode BN), "
              f"distillation weight {args.distill_weight}")
        _, _, best_ap = train.train(args, loss_fn=distill_loss_fn(args, teacher), datasets=datasets)
    except (ValueError, OSError) as err:
        raise SystemExit(f"error: {err}")
    print(f"AP: {best_ap:.3f}")


if __name__ == "__main__":
    run_script(main)
