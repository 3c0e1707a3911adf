"""ref_train.py: the reference's own bf16 training, for the curves hax-train's
train.precision=bf16-pure is checked against (issue 10). Test-side only: hax
never imports it.

It runs DeepGraphLearning/HAX's scripts/joint_recall.py code itself: its
load_model (the model cast to bfloat16, no autocast), its Trainer.forward
(loss, gate loss, accuracy), torch.optim.AdamW with its defaults on the bf16
parameters, its LambdaLR warm-up (lr_lambda), batches of 64 of the reference
dataset in stored order (the script's DataLoader has no shuffle). Only what
needs a network is replaced: wandb and datasets (not imported; the
samples come from the reference's text files, which `hax-datagen --compat
reference --format text` writes byte-equal to scripts/create_dataset.py), and
causal_conv1d's CUDA extension (PyTorch's depthwise conv1d + SiLU, as
/work/shared/oracle/ref_gpu_bench.py does; mamba_ssm's Triton SSD kernel is the
real one). Mamba-1 needs mamba_ssm's selective_scan CUDA extension and is not
run that way. With --ext DIR (carry/ext: selective_scan_cuda and
causal_conv1d_cuda built for sm_90, and causal-conv1d's Python package; see
tests/ref/README.md) nothing is replaced but wandb and datasets: the real
selective_scan_fn, mamba_inner_fn, causal_conv1d_fn and fused
mamba_split_conv1d_scan_combined run, and Mamba-1 models can be trained.

One JSON line per step: step, loss, gate_loss, acc, lr (as the script logs them
to wandb), and a first line naming the GPU, torch, triton and the run.

--save_init FILE writes the model's initial weights, right after load_model's
bf16 cast, as F32 safetensors under the state_dict names (hax's names:
hax-train train.init_from=FILE starts from them); --steps 0 then stops there.
--device cpu puts the model on the CPU (with --steps 0 only: training runs
Triton kernels): the reference constructs the model on the CPU before
.to(device), so the initial weights are the same as on the GPU (a dump needs
no GPU:
  PYTHONPATH=/tmp/site python3 tests/ref/ref_train.py --base_arch mamba2 \
      --sparse_arch sign_bin_lsh+key_selection --seed 1 --steps 0 --device cpu --save_init init.safetensors).

On a GPU machine, with carry/ holding the wheels and sources (see
tests/ref/README.md):
  python3 -m pip install -q --no-index --find-links carry/wheels --target /tmp/site \
      transformers==4.49.0 einops numpy
  python3 -m pip install -q --no-index --no-deps --find-links carry/wheels --target /tmp/site \
      flash-linear-attention==0.2.0
  bin/hax-datagen --out data/ref --compat reference --format text
  PYTHONPATH=/tmp/site python3 tests/ref/ref_train.py --data data/ref --base_arch mamba2 \
      --sparse_arch sign_bin_lsh+key_selection --lr 1e-3 --steps 3000 --seed 1 [--ext carry/ext] > ref_seed1.jsonl
"""
import argparse
import glob
import hashlib
import importlib.machinery
import json
import os
import sys
import time
import types

EXT_MODULES = ("selective_scan_cuda", "causal_conv1d_cuda")


def use_ext(d):
    """Puts the CUDA extensions of folder d (carry/ext) first on sys.path, before
    mamba_ssm, causal_conv1d and the reference are imported. Returns the note
    for the run's metadata: each file's name and the start of its sha256."""
    files = {}
    for mod in EXT_MODULES:
        found = glob.glob(os.path.join(d, mod + ".cpython-%d%d-*.so" % sys.version_info[:2]))
        if len(found) != 1:
            raise SystemExit("--ext %s: expected one %s.cpython-%d%d-*.so, found %d" % (
                (d, mod) + sys.version_info[:2] + (len(found),)))
        files[mod] = found[0]
    if not os.path.isfile(os.path.join(d, "causal_conv1d", "__init__.py")):
        raise SystemExit("--ext %s: expected causal_conv1d/__init__.py (causal-conv1d's Python package)" % d)
    sys.path.insert(0, d)
    return {os.path.basename(f): hashlib.sha256(open(f, "rb").read()).hexdigest()[:16] for f in files.values()}


def fake_selective_scan_cuda():
    """mamba_ssm's Mamba-1 kernel module (a CUDA extension) when it is not
    built: imported by mamba_ssm, never called."""
    ssc = types.ModuleType("selective_scan_cuda")
    ssc.__spec__ = importlib.machinery.ModuleSpec("selective_scan_cuda", None)
    sys.modules.setdefault("selective_scan_cuda", ssc)


def check_ext(d):
    """After the reference is imported: every module that picks a kernel at
    import picked the real one from d (an import error there is silently
    replaced by None in mamba_ssm, fla and the reference)."""
    import mamba_ssm.ops.selective_scan_interface as ssi
    import mamba_ssm.ops.triton.ssd_combined as ssd
    for mod in EXT_MODULES:
        m = sys.modules.get(mod)
        where = os.path.abspath(getattr(m, "__file__", None) or "none")
        if not where.startswith(os.path.abspath(d) + os.sep):
            raise SystemExit("--ext %s: module %s: expected it loaded from there, found %s" % (d, mod, where))
    uses = [(ssi, "selective_scan_cuda"), (ssi, "causal_conv1d_cuda"), (ssi, "causal_conv1d_fn"),
            (ssd, "causal_conv1d_cuda"), (ssd, "causal_conv1d_fn")]
    for name in ("src.modeling_enhanced_mamba", "src.modeling_enhanced_mamba2", "fla.models.mamba.modeling_mamba",
                 "fla.models.mamba2.modeling_mamba2"):
        if name in sys.modules:
            uses += [(sys.modules[name], "causal_conv1d_fn"), (sys.modules[name], "is_fast_path_available")]
    for m, attr in uses:
        if not getattr(m, attr, None):
            raise SystemExit("--ext %s: %s.%s: expected the real kernel, found %r" % (
                d, m.__name__, attr, getattr(m, attr, None)))


def load_joint_recall(path):
    """scripts/joint_recall.py as a module, its two network imports (wandb,
    datasets) replaced by None: they are not used here, and fake modules
    would mislead transformers' checks for installed packages."""
    src = open(path).read()
    for line, repl in (("from datasets import Dataset, load_dataset", "Dataset = load_dataset = None"),
                       ("import wandb", "wandb = None")):
        if line not in src:
            raise SystemExit("%s: expected the line '%s'" % (path, line))
        src = src.replace(line, repl, 1)
    mod = types.ModuleType("joint_recall")
    mod.__file__ = path
    sys.modules["joint_recall"] = mod
    exec(compile(src, path, "exec"), mod.__dict__)
    return mod


def conv_ref(x, weight, bias=None, activation=None, **kw):
    import torch.nn.functional as F
    L = x.shape[-1]
    dim, width = weight.shape
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=dim)[..., :L]
    return out if activation is None else F.silu(out)


def text_files(data, split):
    names = sorted(f for f in os.listdir(data) if f.endswith("_%s_inputs.txt" % split))
    if len(names) != 1:
        raise SystemExit("ref_train.py: %s: expected one *_%s_inputs.txt, found %d" % (data, split, len(names)))
    inputs = os.path.join(data, names[0])
    return inputs, inputs[: -len("inputs.txt")] + "mask.txt"


def batches(data, bsz):
    """Batches of the train split in stored order, as the script's DataLoader gives them."""
    fi, fm = (open(p) for p in text_files(data, "train"))
    while True:
        rows = [(fi.readline(), fm.readline()) for _ in range(bsz)]
        if not rows[-1][0]:
            return
        yield {"inputs": [list(map(int, a.split())) for a, _ in rows],
               "mask": [list(map(int, b.split())) for _, b in rows]}


def triton_version():
    try:
        return __import__("triton").__version__
    except ImportError:
        return None


def save_init(model, path, meta):
    """The model's weights as F32 safetensors under the state_dict names (the
    bf16 values exactly: widening is exact), with the run in the metadata.
    The state_dict must hold exactly the parameters: a buffer in it would be
    a tensor hax does not train (and refuses in train.init_from)."""
    import torch
    from safetensors.torch import save_file
    sd = model.state_dict()
    params = {n for n, _ in model.named_parameters()}
    if set(sd) != params:
        raise SystemExit("--save_init: expected the state_dict to hold exactly the parameters, found also %s" %
                         sorted(set(sd) ^ params))
    tensors = {n: t.detach().to("cpu", torch.float32).contiguous() for n, t in sd.items()}
    save_file(tensors, path, metadata=dict(meta, format="pt", what="ref_train.py --save_init: the weights "
                                           "after load_model's bf16 cast, as F32"))
    print(json.dumps(dict(save_init=path, tensors=len(tensors), params=sum(t.numel() for t in tensors.values()),
                          dtypes=sorted({str(t.dtype) for t in sd.values()}))), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None, help="the reference dataset's text files (needed unless --steps 0)")
    ap.add_argument("--hax", default="carry/hax", help="a checkout of DeepGraphLearning/HAX")
    ap.add_argument("--mamba", default="carry/mamba", help="state-spaces/mamba v2.2.4 (Triton SSD only)")
    ap.add_argument("--base_arch", default="mamba2")
    ap.add_argument("--sparse_arch", default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=3000, help="0: no training (with --save_init: dump and exit)")
    ap.add_argument("--warmup_step", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bsz", type=int, default=64)
    ap.add_argument("--ext", default=None,
                    help="folder of the CUDA extensions selective_scan_cuda, causal_conv1d_cuda (carry/ext)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--save_init", default=None, metavar="FILE",
                    help="write the initial weights (after the bf16 cast) as F32 safetensors")
    a = ap.parse_args()
    if a.steps < 0 or (a.steps > 0 and not a.data):
        raise SystemExit("ref_train.py: --steps: expected 0, or a positive count with --data; found %d%s" % (
            a.steps, "" if a.data else " without --data"))
    if a.device == "cpu" and a.steps > 0:  # fla's RMSNorm and mamba_ssm's SSD are Triton kernels
        raise SystemExit("ref_train.py: --device cpu: expected --steps 0 (the --save_init dump), found --steps %d: "
                         "the training path runs fla's and mamba_ssm's Triton kernels, GPU only" % a.steps)

    ext = use_ext(a.ext) if a.ext else None
    if not ext:
        fake_selective_scan_cuda()
    sys.path.insert(0, a.mamba)
    sys.path.insert(0, a.hax)
    sys.argv = ["joint_recall.py", "--base_arch", a.base_arch, "--lr", str(a.lr), "--step", str(a.steps),
                "--warmup_step", str(a.warmup_step), "--seed", str(a.seed), "--bsz", str(a.bsz),
                "--config_dir", os.path.join(a.hax, "configs")] + (["--sparse_arch", a.sparse_arch] if a.sparse_arch else [])
    import torch
    jr = load_joint_recall(os.path.join(a.hax, "scripts", "joint_recall.py"))
    if ext:
        check_ext(a.ext)
    else:
        for mod in ("src.modeling_enhanced_mamba", "src.modeling_enhanced_mamba2"):
            if mod in sys.modules and hasattr(sys.modules[mod], "causal_conv1d_fn"):
                sys.modules[mod].causal_conv1d_fn = conv_ref

    args = jr.parse_args()
    jr.args = args  # lr_lambda reads the module's global args
    jr.set_seed(args.seed)
    # main()'s model choice (quirk 14: without a sparse branch, the *_double_size config)
    name = args.base_arch if (args.sparse_arch or args.base_arch == "samba") else args.base_arch + "_double_size"
    config = json.load(open(os.path.join(args.config_dir, name + ".json")))
    config.update(sparse_arch=args.sparse_arch, sparse_keys=args.sparse_keys, num_hash=args.num_hash)
    import contextlib
    with contextlib.redirect_stdout(sys.stderr):  # its parameter count: not a JSON line
        model = jr.load_model(args.base_arch, args.sparse_arch, config, a.device)
    if a.save_init:
        save_init(model, a.save_init, dict(ref_config=name, sparse_arch=str(args.sparse_arch), seed=str(args.seed),
                                           torch=torch.__version__))
    if a.steps == 0:
        return
    trainer = jr.Trainer(model, torch.nn.CrossEntropyLoss(), a.device)
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=jr.lr_lambda)
    trainer.model.train()
    gpu = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(json.dumps(dict(gpu=gpu, torch=torch.__version__, triton=triton_version(), config=name,
                          sparse_arch=args.sparse_arch, lr=args.lr, seed=args.seed, steps=args.step,
                          warmup=args.warmup_step,
                          kernels=dict(ext=ext) if ext else "causal_conv1d_fn: conv1d + SiLU (torch, bf16)")),
          flush=True)
    t0 = time.time()
    for step, data in enumerate(batches(a.data, args.bsz), 1):
        if step > args.step:
            break
        data = jr.collate_fn([{"inputs": x, "mask": m} for x, m in zip(data["inputs"], data["mask"])])
        lr = optimizer.param_groups[0]["lr"]
        loss, gate_loss, acc = trainer.forward(data)
        (loss + gate_loss * args.gate_loss_weight).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        print(json.dumps(dict(step=step, loss=float(loss), gate_loss=float(gate_loss), acc=float(acc), lr=lr,
                              s=round(time.time() - t0, 2))), flush=True)


if __name__ == "__main__":
    main()
