"""One train step of every TimeBalance stage, tbkeras against hand-written PyTorch on the same CPU.

    python benchmarks/bench_train_step.py            # R3D-18 at 112 px, Slow-R50 at 224 px: hours on 2 cores
    python benchmarks/bench_train_step.py --quick    # width 0.125, 32 px, batch 2, N=2: a smoke test
    python benchmarks/bench_train_step.py --models=r3d18 --stages=finetune --precisions=bf16   # one row
    python benchmarks/bench_train_step.py ... --profile_steps=2   # + op time by kind: where the gap is

Why: speed claims against PyTorch must be measured side by side on the CPU at hand (the CPUs here
differ, and a choice such as `strided_conv` that wins on one loses on another; issue #13).

Rows: {R3D-18, Slow-R50} x {invariant, distinctive, ssl, finetune, student} x {fp32, bf16}. Each
row runs tbkeras' real stage model (`tbkeras.stages`: `InvariantPretrainer`, `DistinctivePretrainer`,
`SSLPretrainer`, `ClassifierModel`, `StudentDistiller` with two frozen teachers) through its
`train_step` (`train_on_batch`, `FusedAdam` as `fit_stage` compiles it, no XLA) once per
`--strided_convs` choice, and the same step written here in PyTorch (`channels_last_3d`,
`autocast(bfloat16)` for bf16; `Adam(fused=True)`, its fastest CPU Adam), each in its own process
with `--threads` threads, the implementations' order alternating from row to row.
A process does `--warmup` steps, then times `--steps` steps; the median is reported. One run.

Reported per row: s/step, clips/s (clips through the trained backbone: SSL local + global clips,
or the student's labeled + unlabeled clips), GFLOP/s (FLOPs counted by
`tbkeras.models.flops.count_flops`: 3 forwards per trained clip, 1 per teacher forward) and the
speed ratio torch s/step (its fastest run in the row) / tbkeras s/step (> 1: tbkeras faster). The PyTorch losses have the same
shapes and work as ours, not the same values: the backbones are >99.9% of the FLOPs.

Torch comes from benchmarks/requirements-torch.txt, never from the project's requirements.
Writes benchmarks/results/train_step.json (train_step_quick.json with --quick) after every row,
and prints a Markdown table.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("r3d18", "r3d50")
MODEL_NAMES = {"r3d18": "R3D-18", "r3d50": "Slow-R50"}
STAGES = ("invariant", "distinctive", "ssl", "finetune", "student")
SSL_STAGES = STAGES[:3]
PRECISIONS = ("fp32", "bf16")
NUM_CLASSES = 101
RESULT_PREFIX = "RESULT "

FLAGS = flags.FLAGS
flags.DEFINE_list("models", list(MODELS), "Backbones: r3d18, r3d50.")
flags.DEFINE_list("stages", list(STAGES), "Stages: invariant, distinctive, ssl, finetune, student.")
flags.DEFINE_list("precisions", list(PRECISIONS), "fp32 and/or bf16 (tbkeras mixed_bfloat16, torch autocast).")
flags.DEFINE_list("impls", ["tbkeras", "torch"], "Implementations measured.")
flags.DEFINE_list("strided_convs", ["native", "subsample"], "tbkeras strided_conv choices, one measurement each.")
flags.DEFINE_list("adams", ["fused"], "Adam updates measured: fused (tbkeras FusedAdam, torch Adam(fused=True)) "
                  "and/or unfused (keras.optimizers.Adam, torch's default per-tensor loop).")
flags.DEFINE_float("width", 1.0, "Backbone width multiplier.")
flags.DEFINE_integer("r3d18_size", 112, "R3D-18 crop side.")
flags.DEFINE_integer("r3d50_size", 224, "Slow-R50 crop side.")
flags.DEFINE_integer("r3d18_batch", 8, "R3D-18 clips per finetune / student step (student: half labeled).")
flags.DEFINE_integer("r3d50_batch", 2, "Slow-R50 clips per finetune / student step.")
flags.DEFINE_integer("ssl_videos", 2, "Videos per SSL step (L_I's negatives are the other videos).")
flags.DEFINE_integer("ssl_num_clips", 4, "Clips n per SSL video (+1 global clip per view for L_D2).")
flags.DEFINE_integer("ssl_frames", 16, "Frames per SSL local clip.")
flags.DEFINE_integer("ssl_global_frames", 0, "Frames of L_D2's global clip (0 = --ssl_frames, as the paper; "
                     "the demo's 8-frame local clips need 16, recipe flag --ssl_global_clip_length).")
flags.DEFINE_integer("frames", 8, "Frames per finetune / student clip.")
flags.DEFINE_integer("steps", 6, "Timed steps per process (the median is reported).")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing, oneDNN primitive caches).")
flags.DEFINE_integer("threads", 2, "Threads of each process (TF intra-op; torch set_num_threads).")
flags.DEFINE_integer("worker_timeout", 4 * 3600, "Seconds before a measuring process is killed.")
flags.DEFINE_bool("quick", False, "Smoke test: width 0.125, 32 px, batch 2, 2 SSL videos, 2 steps, 1 warm-up.")
flags.DEFINE_integer("profile_steps", 0, "After timing, profile this many more steps of each process and "
                     "report op time by kind (conv forward / backward, batch norm, casts, other).")
flags.DEFINE_string("output", "", "JSON results (default benchmarks/results/train_step[_quick].json).")
flags.DEFINE_string("worker", "", "Internal: run one measurement described by this JSON and print it.")


@dataclasses.dataclass(frozen=True)
class Job:
    """One measurement: one implementation of one stage's step, in its own process."""

    impl: str            # "tbkeras" | "torch"
    strided_conv: str    # tbkeras: "native" | "subsample"; torch: ""
    model: str
    stage: str
    precision: str
    width: float
    size: int
    batch: int
    ssl_videos: int
    ssl_num_clips: int
    ssl_frames: int
    ssl_global_frames: int  # L_D2's global clip; != ssl_frames: a second backbone call, as the recipe
    frames: int
    steps: int
    warmup: int
    threads: int
    profile_steps: int = 0  # > 0: then profile this many more steps, op time by kind (`profile_ops`)
    adam: str = "fused"     # "fused" | "unfused" (keras.optimizers.Adam; torch's default loop)

    @property
    def label(self) -> str:
        label = f"tbkeras {self.strided_conv}" if self.impl == "tbkeras" else "torch"
        return label if self.adam == "fused" else f"{label}, unfused Adam"

    @property
    def views(self) -> int:
        return 1 if self.stage == "invariant" else 2  # as the recipe: L_I needs one view

    @property
    def num_labeled(self) -> int:
        return max(1, self.batch // 2)

    def clips_per_step(self) -> int:
        """Clips through the trained backbone in one step (the unit of the H200 rates)."""
        if self.stage in SSL_STAGES:
            return self.ssl_videos * self.views * (self.ssl_num_clips + (self.stage != "invariant"))
        return self.batch


# ----------------------------------------------------------------------------- inputs

def make_element(job: Job) -> dict:
    """The stage's input element (numpy, channels last), as its tf.data pipeline would give it."""
    import numpy as np

    rng = np.random.default_rng(0)
    s = job.size
    if job.stage in SSL_STAGES:
        v, n, f = job.ssl_videos, job.ssl_num_clips, job.ssl_frames
        return {"local": rng.random((v, job.views, n, f, s, s, 3), dtype=np.float32),
                "global": rng.random((v, job.views, job.ssl_global_frames, s, s, 3), dtype=np.float32)}
    clips = rng.random((job.batch, job.frames, s, s, 3), dtype=np.float32)
    labels = (np.arange(job.batch) % NUM_CLASSES).astype(np.int32)
    if job.stage == "finetune":
        return {"clip": clips, "label": labels}
    nl = job.num_labeled
    scores = rng.random(job.batch, dtype=np.float32)
    return {"labeled": {"clip": clips[:nl], "label": labels[:nl], "score": scores[:nl]},
            "unlabeled": {"clip": clips[nl:], "score": scores[nl:]}}


# ----------------------------------------------------------------------------- tbkeras

def tbkeras_step(job: Job) -> Callable[[], None]:
    """The real stage model, compiled as the recipe compiles it; returns one train step."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(job.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)  # one op at a time, as torch's eager loop
    import keras

    from tbkeras.models import ProjectionHead, build_backbone
    from tbkeras.stages.finetune import ClassifierModel
    from tbkeras.stages.pretrain import DistinctivePretrainer, InvariantPretrainer, SSLPretrainer
    from tbkeras.stages.student import StudentConfig, StudentDistiller
    from tbkeras.train import FusedAdam

    if job.precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    def backbone(name: str) -> keras.Model:
        return build_backbone(job.model, width_multiplier=job.width, strided_conv=job.strided_conv, name=name)

    if job.stage in SSL_STAGES:
        cls = {"invariant": InvariantPretrainer, "distinctive": DistinctivePretrainer, "ssl": SSLPretrainer}[job.stage]
        model = cls(backbone("backbone"), ProjectionHead())
    elif job.stage == "finetune":
        model = ClassifierModel(backbone("backbone"), NUM_CLASSES)
    else:
        model = StudentDistiller(*(ClassifierModel(backbone(n), NUM_CLASSES, name=n) for n in
                                   ("student", "invariant_teacher", "distinctive_teacher")), StudentConfig())
    adam = FusedAdam if job.adam == "fused" else keras.optimizers.Adam  # fused: as fit_stage compiles
    model.compile(optimizer=adam(1e-3), jit_compile=False)
    element = tf.nest.map_structure(tf.constant, make_element(job))
    return lambda: model.train_on_batch(element, return_dict=True)


# ----------------------------------------------------------------------------- torch

def torch_step(job: Job) -> Callable[[], None]:
    """The same step in PyTorch: hand-written backbones in channels_last_3d, fused Adam, bf16 autocast."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(job.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    layout = torch.channels_last_3d
    tau = 0.1

    def scaled(channels: int) -> int:  # = tbkeras.models.r3d._scaled
        return max(1, int(round(channels * job.width)))

    def conv_bn(cin, cout, kernel, stride=1, padding=0, dilation=1, relu=True) -> list:
        layers = [nn.Conv3d(cin, cout, kernel, stride, padding, dilation=dilation, bias=False), nn.BatchNorm3d(cout)]
        return layers + [nn.ReLU(inplace=True)] if relu else layers

    class Residual(nn.Module):
        def __init__(self, body: list, shortcut: list):
            super().__init__()
            self.body, self.shortcut = nn.Sequential(*body), nn.Sequential(*shortcut)

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    def r3d18_layers() -> tuple[list, int]:
        """torchvision r3d_18 (BasicBlocks) with TCLR's dilated layer4, as tbkeras' R3D18."""
        widths = [scaled(c) for c in (64, 128, 256, 512)]
        layers, cin = conv_bn(3, widths[0], (3, 7, 7), (1, 2, 2), (1, 3, 3)), widths[0]
        for i, cout in enumerate(widths):
            for b in range(2):
                stride = 2 if i > 0 and b == 0 else 1
                dilated = i == 3 and b == 0
                st = (1, stride, stride) if dilated else (stride,) * 3
                first = conv_bn(cin, cout, 3, st, (2, 1, 1), (2, 1, 1)) if dilated else conv_bn(cin, cout, 3, st, 1)
                body = first + conv_bn(cout, cout, 3, 1, 1, relu=False)
                shortcut = conv_bn(cin, cout, 1, st, relu=False) if stride != 1 or cin != cout else []
                layers.append(Residual(body, shortcut))
                cin = cout
        return layers, cin

    def r3d50_layers() -> tuple[list, int]:
        """PyTorchVideo Slow-R50, as tbkeras' R3D50."""
        stem = scaled(64)
        layers = conv_bn(3, stem, (1, 7, 7), (1, 2, 2), (0, 3, 3)) + [nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))]
        cin = stem
        for depth, inner, kt, stride in ((3, 64, 1, 1), (4, 128, 1, 2), (6, 256, 3, 2), (3, 512, 3, 2)):
            inner = scaled(inner)
            for b in range(depth):
                st = (1, stride, stride) if b == 0 else 1
                body = (conv_bn(cin, inner, (kt, 1, 1), 1, (kt // 2, 0, 0))
                        + conv_bn(inner, inner, (1, 3, 3), st, (0, 1, 1)) + conv_bn(inner, 4 * inner, 1, relu=False))
                shortcut = conv_bn(cin, 4 * inner, 1, st, relu=False) if b == 0 else []
                layers.append(Residual(body, shortcut))
                cin = 4 * inner
        return layers, cin

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            layers, self.feature_dim = r3d18_layers() if job.model == "r3d18" else r3d50_layers()
            self.net = nn.Sequential(*layers)

        def forward(self, x):
            """[N, 3, T, H, W] (channels_last_3d) -> pooled [N, C], temporal [N, T', C], float32."""
            temporal = self.net(x).float().mean(dim=(3, 4)).transpose(1, 2)
            return temporal.mean(dim=1), temporal

    class ProjectionHead(nn.Module):
        def __init__(self, cin: int):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(cin, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                     nn.Linear(512, 128, bias=False), nn.BatchNorm1d(128))

        def forward(self, x):
            lead = x.shape[:-1]
            return F.normalize(self.mlp(x.reshape(-1, x.shape[-1])).float(), dim=-1).reshape(*lead, 128)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone()
            self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(self.backbone.feature_dim, NUM_CLASSES))

        def forward(self, x):
            return self.head(self.backbone(x)[0]).float()

    def clips(array) -> "torch.Tensor":
        """numpy [..., T, H, W, 3] -> [N, 3, T, H, W] whose memory stays channels-last."""
        x = torch.from_numpy(array.reshape(-1, *array.shape[-4:])).permute(0, 4, 1, 2, 3)
        return x.contiguous(memory_format=layout)

    def ce(logits, targets):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def invariance(z):  # L_I, z [B, n, d]: per ordered pair, positives across time, other videos negative
        b, n, _ = z.shape
        eye = torch.eye(b, dtype=torch.bool)
        losses = []
        for t1 in range(n):
            for t2 in range(n):
                if t1 != t2:
                    logits = z[:, t1] @ torch.cat([z[:, t2], z[:, t1]]).T / tau
                    logits[:, b:] = logits[:, b:].masked_fill(eye, float("-inf"))
                    losses.append(F.cross_entropy(logits, torch.arange(b)))
        return torch.stack(losses).mean()

    def distinctiveness(z, z2):  # L_D1: timestamp t of view 1 vs all timestamps of both views
        b, n, _ = z.shape
        logits = torch.einsum("bid,bjd->bij", z, torch.cat([z2, z], dim=1)) / tau
        logits[:, :, n:] = logits[:, :, n:].masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
        return ce(logits, torch.arange(n).expand(b, n))

    def global_local(slices, local):  # L_D2, both directions
        b, n, _ = slices.shape
        logits = torch.einsum("bid,bjd->bij", slices, local) / tau
        targets = torch.arange(n).expand(b, n)
        return 0.5 * (ce(logits, targets) + ce(logits.transpose(1, 2), targets))

    element = make_element(job)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=job.precision == "bf16")
    if job.stage in SSL_STAGES:
        backbone = Backbone().to(memory_format=layout).train()
        head = ProjectionHead(backbone.feature_dim).train()
        params = [*backbone.parameters(), *head.parameters()]
        local, global_clips = clips(element["local"]), clips(element["global"])
        v, n = job.views, job.ssl_num_clips
        b = job.ssl_videos

        def features():
            """pooled local [B*V*n, C], temporal global [B*V, T', C] (None for L_I alone): one backbone
            call when the clips have one length, else one per length (tbkeras.stages.pretrain)."""
            if job.stage == "invariant":
                return backbone(local)[0], None
            if job.ssl_global_frames == job.ssl_frames:
                pooled, temporal = backbone(torch.cat([local, global_clips]).contiguous(memory_format=layout))
                return pooled[:local.shape[0]], temporal[local.shape[0]:]
            return backbone(local)[0], backbone(global_clips)[1]

        def loss_fn():
            pooled, temporal_global = features()
            z = head(pooled).reshape(b, v, n, -1)
            terms = []
            if job.stage != "distinctive":
                terms.append(sum(invariance(z[:, i]) for i in range(v)) / v)
            if job.stage != "invariant":
                terms.append(distinctiveness(z[:, 0], z[:, 1]))
                slices = F.adaptive_avg_pool1d(temporal_global.transpose(1, 2), n).transpose(1, 2)
                z_slices = head(slices).reshape(b, v, n, -1)
                terms.append(sum(global_local(z_slices[:, i], z[:, i]) for i in range(v)) / v)
            return sum(terms)
    else:
        student = Classifier().to(memory_format=layout).train()
        params = list(student.parameters())
        if job.stage == "finetune":
            x, y = clips(element["clip"]), torch.from_numpy(element["label"]).long()

            def loss_fn():
                return F.cross_entropy(student(x), y)
        else:
            teachers = [Classifier().to(memory_format=layout).eval().requires_grad_(False) for _ in range(2)]
            lab, unl = element["labeled"], element["unlabeled"]
            x = torch.cat([clips(lab["clip"]), clips(unl["clip"])]).contiguous(memory_format=layout)
            y = torch.from_numpy(lab["label"]).long()
            s = torch.cat([torch.from_numpy(lab["score"]), torch.from_numpy(unl["score"])])[:, None]
            nl = y.shape[0]

            def loss_fn():
                logits = student(x)
                with torch.no_grad():
                    p_t = s * torch.softmax(teachers[0](x), -1) + (1 - s) * torch.softmax(teachers[1](x), -1)
                d = ((p_t - torch.softmax(logits, -1)) ** 2).mean(dim=1)
                return F.cross_entropy(logits[:nl], y) + 50.0 * d[:nl].mean() + 100.0 * d[nl:].mean()

    optimizer = torch.optim.Adam(params, lr=1e-3, fused=job.adam == "fused")  # fused: the fastest on CPU

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        float(loss)

    return step


# ----------------------------------------------------------------------------- measuring

def run_worker(job: Job) -> dict[str, Any]:
    """Build, warm up and time one job in this process."""
    if job.impl == "tbkeras":
        from tbkeras.malloc import tune_malloc  # what experiments/run.py does first

        tune_malloc()
    start = time.perf_counter()
    step = tbkeras_step(job) if job.impl == "tbkeras" else torch_step(job)
    built = time.perf_counter() - start
    warmup = []
    for _ in range(job.warmup):
        t = time.perf_counter()
        step()
        warmup.append(time.perf_counter() - t)
    times = []
    for _ in range(job.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    result = {"build_seconds": built, "warmup_seconds": warmup, "step_seconds": times,
              "median_seconds": statistics.median(times)}
    if job.profile_steps:
        result["profile"] = profile_ops(job, step)
    return result


# ----------------------------------------------------------------------------- profiling

OP_KINDS = ("conv forward", "conv backward, input", "conv backward, filter", "conv backward, both",
            "batch norm", "cast", "other")


# tbkeras' batch-norm layer names, with Keras' call suffix: "layer1_block0_bn1_1", "layer1_block0_bn_b_1"
_BN_LAYER = re.compile(r"(^|_)bn(\d+|_[a-z])?(_\d+)?$")


def op_kind(op_type: str, op_name: str = "") -> str:
    """The kind of a TF op (type `_MklNativeConv3DBackpropFilterV2`, name `r3d18_1/stem_bn_1/Sub`:
    Keras computes batch norm from elementwise ops, so its layer name tells them) or of a torch op
    (`aten::convolution_backward`)."""
    name = op_type.lower()
    if "backpropfilter" in name:
        return "conv backward, filter"
    if "backpropinput" in name:
        return "conv backward, input"
    if "convolution_backward" in name:  # torch computes both gradients in one op
        return "conv backward, both"
    if "conv3d" in name or "convolution" in name:
        return "conv forward"
    if "batch_norm" in name or "batchnorm" in name or any(_BN_LAYER.search(part) for part in op_name.split("/")):
        return "batch norm"
    if name in ("cast", "aten::copy_", "aten::to", "aten::_to_copy") or name.endswith("::to"):
        return "cast"
    return "other"


def profile_ops(job: Job, step: Callable[[], None]) -> dict[str, Any]:
    """Op time per step (ms) by kind (`OP_KINDS`) and the 8 costliest op types, over
    `job.profile_steps` steps under the framework's own profiler. TF: the op events of the executor
    threads (with 1 inter-op thread they run one at a time, so their sum is the step's op time);
    torch: each op's self CPU time."""
    import collections

    totals: collections.Counter = collections.Counter()  # op type -> ms
    kinds = {kind: 0.0 for kind in OP_KINDS}
    if job.impl == "tbkeras":
        import glob
        import tempfile

        import tensorflow as tf
        from tensorflow.tsl.profiler.protobuf import xplane_pb2

        with tempfile.TemporaryDirectory() as log_dir:
            tf.profiler.experimental.start(log_dir)
            for _ in range(job.profile_steps):
                step()
            tf.profiler.experimental.stop()
            space = xplane_pb2.XSpace()
            with open(glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
                space.ParseFromString(f.read())
        for plane in space.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    if name.count(":") != 1:  # an op is "<op name>:<op type>"; "ExecutorState::Process" is not
                        continue
                    op_name, op_type = name.split(":")
                    totals[op_type] += event.duration_ps / 1e9
                    kinds[op_kind(op_type, op_name)] += event.duration_ps / 1e9
    else:
        import torch

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(job.profile_steps):
                step()
        for event in prof.key_averages():
            totals[event.key] += event.self_cpu_time_total / 1e3
            kinds[op_kind(event.key)] += event.self_cpu_time_total / 1e3
    n = job.profile_steps
    top = sorted(totals.items(), key=lambda item: -item[1])[:8]
    return {"steps": n, "ms_per_step_by_kind": {k: ms / n for k, ms in kinds.items()},
            "ms_per_step_total": sum(totals.values()) / n, "top_ops_ms_per_step": {k: ms / n for k, ms in top}}


def spawn(job: Job, timeout: int) -> dict[str, Any]:
    """Run `job` in a fresh process; its result, or {"error": ...} so one failure does not end the run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(job.threads), "KERAS_BACKEND": "tensorflow",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={json.dumps(dataclasses.asdict(job))}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: " + "\n".join(proc.stderr.strip().splitlines()[-8:])}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def forward_flops(model: str, width: float, size: int, frames: tuple[int, ...]) -> dict[str, int]:
    """Forward FLOPs per clip of the backbone at each length, and of the heads per feature row."""
    import keras

    from tbkeras.models import Classifier, ProjectionHead, build_backbone
    from tbkeras.models.flops import count_flops

    backbone = build_backbone(model, width_multiplier=width, strided_conv="native")
    features = keras.Input((backbone.feature_dim,))
    counts = {f"clip{t}": count_flops(backbone, (t, size, size, 3))["flops"] for t in frames}
    counts["head"] = count_flops(keras.Model(features, ProjectionHead()(features)), (backbone.feature_dim,))["flops"]
    counts["classifier"] = count_flops(keras.Model(features, Classifier(NUM_CLASSES)(features)),
                                       (backbone.feature_dim,))["flops"]
    keras.backend.clear_session()
    return counts


def step_flops(job: Job, fwd: dict[str, int]) -> int:
    """FLOPs of one train step: 3 forwards per trained clip, 1 per teacher forward (flops.py)."""
    from tbkeras.models.flops import TRAIN_FLOPS_PER_FORWARD as TRAIN

    if job.stage in SSL_STAGES:  # (the head on L_D2's global slices, < 0.01%, is left out)
        local = job.ssl_videos * job.views * job.ssl_num_clips
        global_clips = job.clips_per_step() - local
        return int(TRAIN * (local * (fwd[f"clip{job.ssl_frames}"] + fwd["head"])
                            + global_clips * (fwd[f"clip{job.ssl_global_frames}"] + fwd["head"])))
    per_clip = fwd[f"clip{job.frames}"] + fwd["classifier"]
    teachers = 2 if job.stage == "student" else 0
    return int(job.batch * (TRAIN + teachers) * per_clip)


def machine() -> dict[str, Any]:
    from tbkeras.machine import cpu_model

    cpu_flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            cpu_flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        pass
    versions = {}
    for package in ("tensorflow", "keras", "torch"):
        try:
            versions[package] = __import__(package).__version__ if importlib.util.find_spec(package) else None
        except ImportError:
            versions[package] = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags, "versions": versions,
            "load_average_before": os.getloadavg()}


def _figures(x: float) -> str:
    """3 significant figures without an exponent: 0.893, 388, 1,160."""
    rounded = float(f"{x:.3g}")
    return f"{rounded:,.0f}" if rounded >= 100 else f"{rounded:.3g}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | stage | shape | precision | implementation | s/step | clips/s | GFLOP/s | torch s / this s |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    for row in rows:
        torch_s = min((run["median_seconds"] for label, run in row["runs"].items()  # torch's best
                       if label.startswith("torch") and "median_seconds" in run), default=None)
        for label, run in row["runs"].items():
            if "error" in run:
                lines.append(f"| {row['model']} | {row['stage']} | {row['shape']} | {row['precision']} | {label} | "
                             f"failed: {run['error'].splitlines()[-1][:80]} | | | |")
                continue
            s = run["median_seconds"]
            ratio = f"{torch_s / s:.2f}x" if torch_s and not label.startswith("torch") else ""
            lines.append(f"| {row['model']} | {row['stage']} | {row['shape']} | {row['precision']} | {label} | "
                         f"{s:.3g} | {row['clips_per_step'] / s:.3g} | {_figures(row['flops_per_step'] / s / 1e9)} | "
                         f"{ratio} |")
    return "\n".join(lines) + "\n"


def markdown_profile(rows: list[dict[str, Any]]) -> str:
    """Op time per step by kind, ms (share of the op total), one line per implementation."""
    lines = ["| model | stage | precision | implementation | " + " | ".join(OP_KINDS) + " | op total | step |",
             "|---|---|---|---|" + "---:|" * (len(OP_KINDS) + 2)]
    for row in rows:
        for label, run in row["runs"].items():
            prof = run.get("profile")
            if not prof:
                continue
            total = prof["ms_per_step_total"]
            cells = [f"{ms:.0f} ({100 * ms / total:.0f}%)" if ms else "" for ms in prof["ms_per_step_by_kind"].values()]
            lines.append(f"| {row['model']} | {row['stage']} | {row['precision']} | {label} | " + " | ".join(cells)
                         + f" | {total:.0f} | {1e3 * run['median_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def ssl_shape(job: Job) -> str:
    """"2 videos x 2 views x (4 x 8x32x32 + 1 x 16x32x32)": the local clips, and L_D2's global clip."""
    frame = f"{job.size}x{job.size}"
    clips = f"{job.ssl_num_clips} x {job.ssl_frames}x{frame}"
    if job.stage != "invariant":
        clips += f" + 1 x {job.ssl_global_frames}x{frame}"
    return f"{job.ssl_videos} videos x {job.views} views x ({clips})"


def _check_choices(name: str, values: list[str], choices: tuple[str, ...]) -> None:
    bad = [v for v in values if v not in choices]
    if bad or not values:
        raise app.UsageError(f"--{name}: {bad or 'empty'}; choose from {', '.join(choices)}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.worker:
        job = Job(**json.loads(FLAGS.worker))
        print(RESULT_PREFIX + json.dumps(run_worker(job)), flush=True)
        return
    _check_choices("models", FLAGS.models, MODELS)
    _check_choices("stages", FLAGS.stages, STAGES)
    _check_choices("precisions", FLAGS.precisions, PRECISIONS)
    _check_choices("impls", FLAGS.impls, ("tbkeras", "torch"))
    _check_choices("strided_convs", FLAGS.strided_convs, ("native", "subsample"))
    _check_choices("adams", FLAGS.adams, ("fused", "unfused"))
    if "torch" in FLAGS.impls and importlib.util.find_spec("torch") is None:
        raise app.UsageError("torch is not installed: pip install -r benchmarks/requirements-torch.txt "
                             "(CPU wheels), or pass --impls=tbkeras")
    quick = FLAGS.quick
    width = 0.125 if quick else FLAGS.width
    sizes = {m: 32 if quick else getattr(FLAGS, f"{m}_size") for m in MODELS}
    batches = {m: 2 if quick else getattr(FLAGS, f"{m}_batch") for m in MODELS}
    ssl_videos = 2 if quick else FLAGS.ssl_videos
    steps, warmup = (2, 1) if quick else (FLAGS.steps, FLAGS.warmup)
    if min(batches.values()) < 2 or ssl_videos < 2 or FLAGS.ssl_num_clips < 2 or steps < 1:
        raise app.UsageError("batches and --ssl_videos need >= 2 (labeled + unlabeled; L_I's negatives), "
                             "--ssl_num_clips >= 2, --steps >= 1")
    if FLAGS.ssl_global_frames < 0:
        raise app.UsageError(f"--ssl_global_frames={FLAGS.ssl_global_frames}: frames of the global clip, "
                             ">= 1 (or 0 for --ssl_frames)")
    output = FLAGS.output or os.path.join(REPO, "benchmarks", "results",
                                          "train_step_quick.json" if quick else "train_step.json")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from tbkeras.files import atomic_write_json

    start = time.perf_counter()
    setup = {"machine": machine(), "command": " ".join(["python benchmarks/bench_train_step.py", *sys.argv[1:]]),
             "threads": FLAGS.threads, "steps": steps, "warmup": warmup, "width": width}
    global_frames = FLAGS.ssl_global_frames or FLAGS.ssl_frames
    fwd = {m: forward_flops(m, width, sizes[m], tuple(sorted({FLAGS.frames, FLAGS.ssl_frames, global_frames})))
           for m in FLAGS.models}
    variants = [("tbkeras", sc, adam) for sc in FLAGS.strided_convs for adam in FLAGS.adams if "tbkeras" in FLAGS.impls]
    variants += [("torch", "", adam) for adam in FLAGS.adams if "torch" in FLAGS.impls]
    rows: list[dict[str, Any]] = []
    for model in FLAGS.models:
        for stage in FLAGS.stages:
            for precision in FLAGS.precisions:
                jobs = [Job(impl, sc, model, stage, precision, width, sizes[model], batches[model], ssl_videos,
                            FLAGS.ssl_num_clips, FLAGS.ssl_frames, global_frames, FLAGS.frames, steps, warmup,
                            FLAGS.threads, FLAGS.profile_steps, adam)
                        for impl, sc, adam in variants]
                if len(rows) % 2:
                    jobs.reverse()  # alternate which implementation goes first
                job = jobs[0]
                shape = ssl_shape(job) if stage in SSL_STAGES else f"B={job.batch}, {job.frames}x{job.size}x{job.size}"
                row = {"model": MODEL_NAMES[model], "stage": stage, "precision": precision, "shape": shape,
                       "width": width, "clips_per_step": job.clips_per_step(),
                       "flops_per_step": step_flops(job, fwd[model]), "runs": {}}
                for j in jobs:
                    row["runs"][j.label] = spawn(j, FLAGS.worker_timeout)
                    print(f"{row['model']} {stage} {precision} {j.label}: "
                          f"{row['runs'][j.label].get('median_seconds', row['runs'][j.label].get('error'))}",
                          file=sys.stderr, flush=True)
                row["runs"] = {j.label: row["runs"][j.label] for j in sorted(jobs, key=lambda j: j.label)}
                rows.append(row)
                setup["seconds"] = round(time.perf_counter() - start, 1)
                atomic_write_json(output, {"setup": setup, "rows": rows})
    setup["load_average_after"] = os.getloadavg()
    atomic_write_json(output, {"setup": setup, "rows": rows})
    print(markdown(rows))
    if FLAGS.profile_steps:
        print(markdown_profile(rows))
    m = setup["machine"]
    print(f"{setup['seconds'] / 60:.1f} min on {m['cpu']} ({m['cores']} cores, {FLAGS.threads} threads per process; "
          f"strided_conv='auto' would train the faster of the two tbkeras rows); wrote {output}")


if __name__ == "__main__":
    app.run(main)
