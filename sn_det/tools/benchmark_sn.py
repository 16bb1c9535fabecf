"""Benchmark SN against BatchNorm, GroupNorm and the textbook SN formulation.

Layer part: forward+backward time of each norm at detection shapes, measured interleaved in
one run (these machines are noisy: every round times every implementation once, in an order
that changes from round to round, and the medians are compared), and the bytes each keeps
for backward (saved tensors, counted once per storage), as ratios against GroupNorm and the
input.

Model part: one training step of the small Mask R-CNN of the demo with BN, GN and SN as the
norm of backbone, FPN and mask head, interleaved the same way (default on CPU); or (--model
r50fpn, the default on CUDA) a Mask R-CNN R50-FPN step on 2 random images of ~800x1216 with
FrozenBN, BN, GN and SN, in float32 and under AMP, with peak memory.

On CUDA the layer part uses the R50-FPN shapes and runs in float32 and under float16 autocast.
With --compiled it also times SN under torch.compile, which runs SN's torch-ops form as
inductor's generated kernels (what a compiled model gets), beside sn_det's own kernels.

Fixed cost part: the time of one layer step at a shape too small for the device work to
matter, i.e. what a model pays per norm layer per step whatever its size (on a GPU: Python,
dispatch, allocations and kernel launches on the host), with the device operations (kernels,
memsets, copies) of one step counted on CUDA.

Prints markdown tables and writes them to --out (default benchmarks/latest.md), rewritten
after each part, so that a run cut short keeps the parts it finished.

Examples:
  tools/benchmark_sn.py                      # full run (a few minutes on 2 CPU cores)
  tools/benchmark_sn.py --rounds 3 --skip-model
  tools/benchmark_sn.py --device cuda        # on a GPU machine: R50-FPN shapes, fp32 and AMP
  tools/benchmark_sn.py --device cuda --compiled --skip-model   # Triton vs inductor
  tools/benchmark_sn.py --shapes 2x64x56x56 8x256x14x14 --rounds 5 --skip-model
  tools/benchmark_sn.py --model r50fpn --image-size 128 160 --rounds 1 --model-rounds 1 \
      --warmup 1 --r50-opts MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 64
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from sn_det import model_zoo
from sn_det.layers import SwitchNorm2d

SHAPES = [(2, 256, 100, 100), (256, 256, 14, 14), (2, 64, 200, 200), (2, 1024, 25, 25)]
# R50-FPN Mask R-CNN shapes at 2 images of ~800x1216 (stages, FPN levels, ROI heads).
CUDA_SHAPES = [
    (2, 64, 400, 608),
    (2, 256, 200, 304),
    (2, 512, 100, 152),
    (2, 1024, 50, 76),
    (2, 2048, 25, 38),
    (256, 256, 14, 14),
    (1024, 256, 7, 7),
    (8, 256, 200, 304),
]


class TextbookSwitchNorm2d(nn.Module):
    """The published formulation, kept here as the "before" of the benchmark: statistics by
    separate mean/var calls, the mix and the normalisation as broadcast ops, all
    differentiated by autograd (which keeps every intermediate for backward)."""

    def __init__(self, c, eps=1e-5, momentum=0.997):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, c, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(1, c, 1))
        self.register_buffer("running_var", torch.zeros(1, c, 1))
        self.eps, self.momentum = eps, momentum

    def forward(self, x):
        n, c, h, w = x.size()
        x = x.view(n, c, -1)
        mean_in = x.mean(-1, keepdim=True)
        var_in = x.var(-1, keepdim=True)
        mean_ln = mean_in.mean(1, keepdim=True)
        temp = var_in + mean_in**2
        var_ln = temp.mean(1, keepdim=True) - mean_ln**2
        mean_bn = mean_in.mean(0, keepdim=True)
        var_bn = temp.mean(0, keepdim=True) - mean_bn**2
        with torch.no_grad():
            self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * mean_bn)
            self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var_bn)
        mw = torch.softmax(self.mean_weight, 0)
        vw = torch.softmax(self.var_weight, 0)
        mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
        var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
        x = (x - mean) / (var + self.eps).sqrt()
        return x.view(n, c, h, w) * self.weight + self.bias


COMPILED = "SN torch.compile"


def layer_factories(c, compiled=False):
    """The norms timed at C channels. ``compiled`` adds SN under torch.compile: inductor's
    kernels for SN's torch-ops form (what a compiled model runs), against sn_det's own
    kernels (C++ on CPU, Triton on CUDA) in the "SN (sn_det)" column."""
    factories = {
        "SN (sn_det)": lambda: SwitchNorm2d(c),
        "SN textbook": lambda: TextbookSwitchNorm2d(c),
        "BatchNorm2d": lambda: nn.BatchNorm2d(c),
        "GroupNorm(32)": lambda: nn.GroupNorm(32, c),
    }
    if compiled:
        factories[COMPILED] = lambda: torch.compile(SwitchNorm2d(c))
    return factories


def saved_bytes(module, x):
    """Bytes kept for backward by one training forward (each storage counted once), not
    counting the module's own parameters and buffers, which exist with or without a step."""
    own = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(x)
    del y
    return sum(storages.values())


def round_order(items, r):
    """``items`` (a list) in the order of timing round ``r``: the rows of a balanced Latin
    square (Williams design), so that every implementation is timed right after every other
    one equally often (once per len(items) rounds; twice per 2 len(items) for an odd count)
    and sits at every position of the round. In one fixed order an implementation always
    inherits the allocations and cache footprint of the same predecessor."""
    n = len(items)
    first, lo, hi = [0], 1, n - 1  # 0, 1, n-1, 2, n-2, ...
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(i + k) % n for i in first] for k in range(n)]
    if n % 2:  # odd n needs the mirrored rows too for every ordered pair to occur
        rows += [row[::-1] for row in rows]
    return [items[i] for i in rows[r % len(rows)]]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_layers(shapes, rounds, device, amp=False, compiled=False):
    """Median forward+backward time, saved bytes and (CUDA) peak memory of each norm per shape.
    ``amp``: a float16 input under float16 autocast, as a conv under AMP hands it on.
    ``compiled``: SN under torch.compile too (compiled in the warm-up rounds, per shape)."""
    rows = []
    dtype = torch.float16 if amp else torch.float32
    for shape in shapes:
        print(f"[layers{' amp' if amp else ''}] {shape} ...", flush=True)
        if compiled:
            torch._dynamo.reset()  # one shape's graphs at a time (dynamo caps recompilations)
        factories = layer_factories(shape[1], compiled)
        mods = {k: f().to(device).train() for k, f in factories.items()}
        x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
        dy = torch.randn(shape, device=device, dtype=dtype)

        def step(m):
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                y = m(x)
            y.backward(dy.to(y.dtype))

        times = {k: [] for k in mods}
        for r in range(rounds + 2):  # rounds 0 and 1 warm up (kernel compilation, caches)
            for k, m in round_order(list(mods.items()), r):
                x.grad = None
                m.zero_grad(set_to_none=True)  # as a training step: no accumulation kernels
                sync(device)
                t = time.perf_counter()
                step(m)
                sync(device)
                if r > 1:
                    times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            saved = {k: saved_bytes(m, x) for k, m in mods.items()}
        peak = {}
        if device.type == "cuda":
            for k, m in mods.items():
                x.grad = None
                m.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step(m)
                torch.cuda.synchronize()
                peak[k] = torch.cuda.max_memory_allocated() - base
        rows.append((shape, med, saved, peak, x.numel() * x.element_size()))
    return rows


# The fixed-cost shape: a 256-channel map of 8x8, where a GPU finishes each kernel in a few
# microseconds, so that back-to-back steps are paced by the host.
FIXED_COST_SHAPE = (2, 256, 8, 8)
FIXED_COST_STEPS = 50


def _fixed_cost_setup(device, shape):
    """The norms (without the compiled SN, which has no per-layer launch pattern of its own)
    at ``shape``, float32, and a ``step(m)`` that runs one forward+backward the way a training
    step does: parameter gradients set to None first (the optimizer's zero_grad), so that the
    first backward allocates them rather than accumulating into old ones."""
    mods = {k: f().to(device).train() for k, f in layer_factories(shape[1]).items()}
    x = torch.randn(shape, device=device).requires_grad_(True)
    dy = torch.randn(shape, device=device)

    def step(m):
        x.grad = None
        m.zero_grad(set_to_none=True)
        m(x).backward(dy)

    return mods, step


def bench_fixed_cost(rounds, device, shape=FIXED_COST_SHAPE, steps=FIXED_COST_STEPS):
    """Per norm: median seconds per forward+backward over ``steps`` back-to-back steps at the
    tiny ``shape`` (one synchronisation per ``steps``, so the host's launch pace is what is
    timed on a GPU). Returns {name: seconds per step}."""
    print(f"[fixed cost] {shape} x {steps} steps ...", flush=True)
    mods, step = _fixed_cost_setup(device, shape)
    times = {k: [] for k in mods}
    for r in range(rounds + 2):  # rounds 0 and 1 warm up
        for k, m in round_order(list(mods.items()), r):
            sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                step(m)
            sync(device)
            if r > 1:
                times[k].append((time.perf_counter() - t) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def count_device_ops(device, shape=FIXED_COST_SHAPE):
    """Per norm: the device operations (kernels, memsets, copies) of one forward+backward at
    ``shape``, counted by torch's profiler after a warm-up step. {name: count}, or None on the
    CPU or where the profiler cannot see the GPU (no CUPTI: it then records no device event)."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    print(f"[fixed cost] device operations per step at {shape} ...", flush=True)
    mods, step = _fixed_cost_setup(device, shape)
    counts = {}
    for k, m in mods.items():
        step(m)  # warm-up: compilation and first allocations are not part of a step
        torch.cuda.synchronize()
        try:
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step(m)
                torch.cuda.synchronize()
        except RuntimeError as e:
            print(f"[fixed cost] the profiler cannot count device operations: {e}", flush=True)
            return None
        counts[k] = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    if not any(counts.values()):  # every step runs kernels: zero means the profiler saw none
        print("[fixed cost] the profiler recorded no device operation (no CUPTI?)", flush=True)
        return None
    return counts


def render_fixed_cost(times, ops=None, sn_layers=None, shape=FIXED_COST_SHAPE,
                      steps=FIXED_COST_STEPS):  # fmt: skip
    """Markdown table of bench_fixed_cost's ``times`` and count_device_ops's ``ops`` (None:
    "-"); with ``sn_layers`` (the SN layers of the timed R50-FPN model), about what SN's fixed
    cost over GN's adds to one step of that model."""
    bn, gn = times["BatchNorm2d"], times["GroupNorm(32)"]
    out = [
        f"Fixed cost per layer step: forward+backward at {tuple(shape)}, float32, timed over "
        f"{steps} back-to-back steps (what a model pays per norm layer per step, whatever its "
        "size; on a GPU, the host's launch pace), and the device operations of one step:",
        "",
        "| norm | us/step | vs BN | vs GN | device ops/step |",
        "|---|---|---|---|---|",
    ]
    for name, t in times.items():
        ops_s = "-" if ops is None or ops.get(name) is None else str(ops[name])
        out.append(f"| {name} | {t * 1e6:.0f} | {t / bn:.2f} | **{t / gn:.2f}** | {ops_s} |")
    if sn_layers:
        extra = sn_layers * (times["SN (sn_det)"] - gn)
        out += [
            "",
            f"The R50-FPN SN model above has {sn_layers} SN layers: about {sn_layers} x (SN - GN)"
            f" = {extra * 1e3:.1f} ms per step from fixed costs, where the host paces the GPU.",
        ]
    return out


def bench_model(rounds, device, threads):
    from detectron2.config import get_cfg
    from detectron2.data import build_detection_train_loader
    from sn_det.modeling import build_model
    from detectron2.utils.events import EventStorage

    from sn_det import add_sn_config
    from sn_det.engine import build_sn_optimizer

    cfg_path = model_zoo.get_config_file("demo/mask_rcnn_R_18_FPN_sn_synthetic.yaml")
    models = {}
    for norm in ("BN", "GN", "SN"):
        cfg = add_sn_config(get_cfg())
        cfg.merge_from_file(cfg_path)
        cfg.merge_from_list(
            [
                "MODEL.DEVICE",
                device.type,
                "MODEL.RESNETS.NORM",
                norm,
                "MODEL.FPN.NORM",
                norm,
                "MODEL.ROI_MASK_HEAD.NORM",
                norm,
                "DATALOADER.NUM_WORKERS",
                "0",
            ]
        )
        torch.manual_seed(0)
        model = build_model(cfg).train()
        models[norm] = (model, build_sn_optimizer(cfg, model))
    batches = []
    loader = iter(build_detection_train_loader(cfg))
    for _ in range(rounds + 1):
        batches.append(next(loader))
    times = {k: [] for k in models}
    with EventStorage(0):
        for r, batch in enumerate(batches):
            print(f"[model] round {r}/{rounds}", flush=True)
            for k, (model, opt) in round_order(list(models.items()), r):
                sync(device)
                t = time.perf_counter()
                loss = sum(model(batch).values())
                opt.zero_grad()
                loss.backward()
                opt.step()
                sync(device)
                if r > 0:
                    times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


R50_NORMS = ("FrozenBN", "BN", "GN", "SN")


def r50_fpn_cfg(norm, device, opts=()):
    """Mask R-CNN R50-FPN with ``norm`` in backbone, FPN, a 4conv1fc box head and the mask
    head (FrozenBN: detectron2's default, a frozen backbone and no norm elsewhere). No weights
    and learning rate 0: a timing needs no trained model, and lr 0 keeps every step alike."""
    from detectron2.config import get_cfg

    from sn_det import add_sn_config

    cfg = add_sn_config(get_cfg())
    cfg.merge_from_file(model_zoo.get_config_file("Base-SN-RCNN-FPN.yaml"))
    head_norm = "" if norm == "FrozenBN" else norm
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", device.type,
            "MODEL.WEIGHTS", "",
            "MODEL.MASK_ON", True,
            "MODEL.RESNETS.DEPTH", 50,
            "MODEL.RESNETS.NORM", norm,
            "MODEL.FPN.NORM", head_norm,
            "MODEL.ROI_BOX_HEAD.NAME", "SNFastRCNNConvFCHead",
            "MODEL.ROI_BOX_HEAD.NUM_CONV", 4,
            "MODEL.ROI_BOX_HEAD.NUM_FC", 1,
            "MODEL.ROI_BOX_HEAD.NORM", head_norm,
            "MODEL.ROI_MASK_HEAD.NAME", "SNMaskRCNNConvUpsampleHead",
            "MODEL.ROI_MASK_HEAD.NORM", head_norm,
            "SOLVER.BASE_LR", 0.0,
        ]
        + list(opts)
    )  # fmt: skip
    return cfg


def random_batch(num_images, size, device, seed):
    """Detection training inputs: random images with 8 random boxes and masks each."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for _ in range(num_images):
        xy = torch.rand(8, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(8, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([w - 1.0, h - 1.0]))], 1)
        masks = torch.zeros(8, h, w, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(0, 80, (8,), generator=g)
        inst.gt_masks = BitMasks(masks)
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        batch.append(
            {"image": image.to(device), "instances": inst.to(device), "height": h, "width": w}
        )
    return batch


def bench_r50_fpn(rounds, device, amp, size, warmup=3, opts=()):
    """s/step and peak memory of a Mask R-CNN R50-FPN training step (2 images of ``size``)
    per norm. Every model is warmed up on its own first (cuDNN autotuning, Triton compilation,
    the allocator), then the timed rounds rotate the order of the models, so that no model
    always runs first or last in a round. ``opts``: KEY VALUE config overrides."""
    from sn_det.modeling import build_model
    from detectron2.utils.events import EventStorage

    from sn_det.engine import build_sn_optimizer

    models = {}
    for norm in R50_NORMS:
        cfg = r50_fpn_cfg(norm, device, opts)
        torch.manual_seed(0)
        model = build_model(cfg).train()
        models[norm] = (model, build_sn_optimizer(cfg, model))
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    batch = random_batch(2, size, device, seed=0)

    def step(model, opt):
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = sum(model(batch).values())
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    times = {k: [] for k in models}
    peak = {}
    names = list(models)
    with EventStorage(0):
        for k in names:
            for _ in range(warmup):
                step(*models[k])
            if device.type == "cuda":
                # Above what is allocated before the step: all four models' weights, gradients
                # and optimizer state stay resident, more of them the later a model comes.
                sync(device)
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step(*models[k])
                sync(device)
                peak[k] = torch.cuda.max_memory_allocated() - base
        for r in range(rounds):
            print(f"[r50-fpn{' amp' if amp else ''}] round {r + 1}/{rounds}", flush=True)
            for k in round_order(names, r):
                sync(device)
                t = time.perf_counter()
                step(*models[k])
                sync(device)
                times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), peak.get(k)) for k, v in times.items()}


def render_r50(results, title, size, rounds):
    out = [
        f"Mask R-CNN R50-FPN training step, {title}, 2 images of {size[0]}x{size[1]}, norm in "
        "backbone + FPN + 4conv1fc box head + mask head (FrozenBN: frozen backbone, no norm "
        f"elsewhere); medians of {rounds} rounds in rotating order after per-model warm-up; "
        "step memory: the peak allocated during one step above what was allocated before it "
        "(weights, gradients and optimizer state):",
        "",
        "| norm | s/step | vs GN | vs FrozenBN | step memory GiB |",
        "|---|---|---|---|---|",
    ]
    for k in R50_NORMS:
        t, mem = results[k]
        mem_s = f"{mem / 2**30:.2f}" if mem is not None else "-"
        out.append(
            f"| {k} | {t:.3f} | **{t / results['GN'][0]:.2f}** | "
            f"**{t / results['FrozenBN'][0]:.2f}** | {mem_s} |"
        )
    return out


def machine_line(device, threads):
    if device.type == "cuda":
        what = torch.cuda.get_device_name()
    else:
        what = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                what = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return f"{what}, {threads} threads, torch {torch.__version__}, {datetime.date.today()}"


def render(
    layer_rows, model_times, device, threads, rounds, model_rounds, amp_rows=None, r50=(),
    fixed=None, sn_layers=None, fixed_ops=None,
):  # fmt: skip
    out = [f"Machine: {machine_line(device, threads)}; medians of {rounds} interleaved rounds.", ""]
    out += render_layers(layer_rows, "float32")
    if amp_rows:
        out += [""] + render_layers(amp_rows, "float16 input under float16 autocast")
    for results, title, size in r50:
        out += [""] + render_r50(results, title, size, model_rounds)
    if model_times:
        out += [
            "",
            "Mask R-CNN training step (demo model: R-18-FPN, 4 images of 128x128; the norm of "
            f"backbone, FPN and mask head varies; medians of {model_rounds} interleaved rounds):",
            "",
            "| norm | s/step | vs GN |",
            "|---|---|---|",
        ]
        for k in ("BN", "GN", "SN"):
            out.append(
                f"| {k} | {model_times[k]:.3f} | **{model_times[k]/model_times['GN']:.2f}** |"
            )
    if fixed:
        out += [""] + render_fixed_cost(fixed, fixed_ops, sn_layers)
    return "\n".join(out) + "\n"


def render_layers(layer_rows, title):
    """Markdown tables of one bench_layers result: times and ratios (with a column group for
    SN under torch.compile when it was timed), then CUDA peak memory."""
    compiled = bool(layer_rows) and COMPILED in layer_rows[0][1]
    columns = ["shape (N,C,H,W)", "SN ms", "GN ms", "BN ms", "textbook SN ms", "SN/GN", "SN/BN"]
    columns += ["textbook/GN"]
    if compiled:
        columns += ["compiled SN ms", "compiled/GN", "compiled/SN"]
    columns += ["SN saved/input", "GN saved/input", "textbook saved/input"]
    out = [f"Layers, forward+backward, {title}:", ""]
    out += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for shape, med, saved, peak, in_bytes in layer_rows:
        sn, gn, bn, tb = (
            med[k] for k in ("SN (sn_det)", "GroupNorm(32)", "BatchNorm2d", "SN textbook")
        )
        cells = [str(tuple(shape))] + [f"{t * 1e3:.1f}" for t in (sn, gn, bn, tb)]
        cells += [f"**{sn / gn:.2f}**", f"{sn / bn:.2f}", f"{tb / gn:.2f}"]
        if compiled:
            co = med[COMPILED]
            cells += [f"{co * 1e3:.1f}", f"**{co / gn:.2f}**", f"{co / sn:.2f}"]
        cells += [
            f"**{saved['SN (sn_det)'] / in_bytes:.2f}**",
            f"{saved['GroupNorm(32)'] / in_bytes:.2f}",
            f"{saved['SN textbook'] / in_bytes:.2f}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    if layer_rows and layer_rows[0][3]:
        names = ["SN (sn_det)", "GroupNorm(32)", "BatchNorm2d"] + ([COMPILED] if compiled else [])
        heads = ["SN", "GN", "BN"] + (["compiled SN"] if compiled else [])
        out += [
            "",
            "| shape | " + " | ".join(f"{h} peak/input" for h in heads) + " |",
            "|" + "---|" * (len(heads) + 1),
        ]
        for shape, _, _, peak, in_bytes in layer_rows:
            ratios = " | ".join(f"{peak[k] / in_bytes:.2f}" for k in names)
            out.append(f"| {tuple(shape)} | {ratios} |")
    return out


def _shape(text: str):
    """An (N, C, H, W) shape from "NxCxHxW" (argparse type)."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape NxCxHxW of positive sizes")
    if shape[1] % 32:
        raise argparse.ArgumentTypeError(f"{text!r}: C must be a multiple of 32 (GroupNorm(32))")
    return shape


def _whole(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {what} whole number")
    return value


def _positive(text: str) -> int:
    return _whole(text, 1, "positive")


def _non_negative(text: str) -> int:
    return _whole(text, 0, "non-negative")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """Bad input: one sentence on stderr, exit 2 (no usage dump)."""
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv=None):
    """Run the benchmark; ``argv``: the arguments (default: the command line's)."""
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument("--threads", type=_positive, default=2, help="torch threads on CPU")
    parser.add_argument(
        "--rounds", type=_positive, default=21, help="interleaved timing rounds (median)"
    )
    parser.add_argument(
        "--model-rounds", type=_positive, default=15, help="rounds of the model step"
    )
    parser.add_argument("--skip-model", action="store_true", help="layers only")
    parser.add_argument(
        "--shapes",
        type=_shape,
        nargs="+",
        metavar="NxCxHxW",
        help="layer shapes (default: detection shapes on CPU, the R50-FPN ones on CUDA)",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time SN under torch.compile (inductor's kernels; compiles once per shape)",
    )
    parser.add_argument(
        "--model",
        choices=["demo", "r50fpn"],
        help="model of the step timing: the demo R-18-FPN (default on CPU) or Mask R-CNN "
        "R50-FPN with FrozenBN/BN/GN/SN, fp32 and AMP (default on CUDA)",
    )
    parser.add_argument(
        "--image-size",
        type=_positive,
        nargs=2,
        default=(800, 1216),
        metavar=("H", "W"),
        help="image size of the R50-FPN step (2 images)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative,
        default=3,
        help="untimed R50-FPN steps per model before timing",
    )
    parser.add_argument(
        "--r50-opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides of the R50-FPN models, KEY VALUE pairs "
        "(e.g. MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 64)",
    )
    parser.add_argument("--out", default="benchmarks/latest.md", help="markdown file to write")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a device (cpu, cuda, cuda:N)")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: this benchmark runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA GPU is available")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            parser.error(f"--device {args.device}: this machine has "
                         f"{torch.cuda.device_count()} GPU(s)")  # fmt: skip
        # Everything below (models built for "cuda", synchronisation, memory statistics) uses
        # the current device.
        torch.cuda.set_device(device)
    if len(args.r50_opts) % 2:
        parser.error("--r50-opts takes KEY VALUE pairs; got an odd number of words")
    if os.path.isdir(args.out):
        parser.error(f"--out {args.out!r} is a folder; name the markdown file to write")
    args.model = args.model or ("r50fpn" if device.type == "cuda" else "demo")
    sn_layers = None  # SN layers of the R50-FPN model, when it is timed
    if args.model == "r50fpn" and not args.skip_model:
        from sn_det.modeling import build_model

        try:  # before minutes of layer timings: a bad override stops here, in one sentence
            # (built on the CPU: a value that only fails in a builder, e.g. a ResNet depth)
            probe = build_model(r50_fpn_cfg("SN", torch.device("cpu"), args.r50_opts))
        except (KeyError, ValueError, TypeError, AssertionError) as e:
            parser.error(f"--r50-opts {' '.join(args.r50_opts)!r} do not apply: {e}")
        sn_layers = sum(isinstance(m, SwitchNorm2d) for m in probe.modules())
        del probe
    # Process-wide settings, restored on the way out: main() also runs inside other programs
    # (the tests call it in their own process).
    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    try:
        _run(args, device, sn_layers)
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn_benchmark


def _run(args, device, sn_layers):
    """main()'s measurements, in the order that keeps the most if a time limit cuts them short;
    --out is rewritten after each part."""
    shapes = args.shapes or (CUDA_SHAPES if device.type == "cuda" else SHAPES)
    layer_rows, amp_rows, model_times, r50, fixed, fixed_ops = None, None, None, [], None, None
    # SN's fixed cost times the SN layers of the R50-FPN model estimates what it adds to a step
    # where the host paces a GPU; the CPU computes while it launches, so no such estimate there.
    layers_of_model = sn_layers if device.type == "cuda" else None

    def write():
        """Render what is measured so far and replace --out with it in one rename: a run cut
        short (a time limit, a failing model part) keeps the tables it finished."""
        table = render(
            layer_rows, model_times, device, args.threads, args.rounds, args.model_rounds,
            amp_rows, r50, fixed, layers_of_model if r50 else None, fixed_ops,
        )  # fmt: skip
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(table)
        os.replace(tmp, args.out)
        return table

    layer_rows = bench_layers(shapes, args.rounds, device, compiled=args.compiled)
    write()
    # Early, as it takes seconds and is the figure that explains the model step on a GPU.
    fixed = bench_fixed_cost(args.rounds, device)
    write()
    if device.type == "cuda":  # under AMP too: SN must not make a float32 copy of a half input
        amp_rows = bench_layers(shapes, args.rounds, device, amp=True, compiled=args.compiled)
        write()
    if not args.skip_model and args.model == "demo":
        model_times = bench_model(args.model_rounds, device, args.threads)
        write()
    elif not args.skip_model:
        size = tuple(args.image_size)
        for amp in (False, True) if device.type == "cuda" else (False,):
            results = bench_r50_fpn(
                args.model_rounds, device, amp, size, args.warmup, args.r50_opts
            )
            r50.append((results, "AMP (float16 autocast)" if amp else "float32", size))
            write()
    # Last: the profiler (CUDA only) must not linger into any timing above.
    fixed_ops = count_device_ops(device)
    table = write()
    print()
    print(table)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
