"""ref_golden_bf16.py: golden cases in bf16-pure, made by running the REAL
reference on a GPU (issue 10). Test-side only: hax never imports it.

For each case it builds the model exactly as scripts/joint_recall.py does
(load_model: the fla / Enhanced model, then .to(torch.bfloat16).to("cuda")),
puts in the weights (rounded to bf16 by that cast), runs its Trainer.forward
on a fixed batch with the golden random draws injected, backward of
loss + 0.1 * gate_loss, and one torch.optim.AdamW step (lr 1e-3 from zero
state, the reference's other settings; on CUDA tensors torch takes its
foreach path on the bf16 parameters), and writes a file in the golden format
(tests/golden/README.md) with F32 tensors holding the bf16 values:

  parameters (before the step), input_ids, loss_mask, rand.layers.{i}.*
  (the bf16 draws actually used and the key-selection picks the reference
  took), dbg.layers.{i}.{hq,hk}_proj and {q,k}_bucket (its LSH projections
  and buckets), dbg.layers.{i}.hidden_in and dbg.norm_f.hidden_in (the
  residual stream entering block i and norm_f, [B, L, d] like
  out.last_hidden_state: where a forward gap starts), out.last_hidden_state,
  out.logits, out.loss, out.gate_loss, out.total_loss, out.acc, grad.<param>,
  adamw.<param> (after the step), adamw.exp_avg.<param>,
  adamw.exp_avg_sq.<param> (both moments after it), and metadata hax_case
  with "precision": "bf16-pure", the kernel path and the torch / triton / GPU
  versions.

Kernels (--path):
  triton  the real GPU kernels where the lent machines have them: fla 0.2.0's
          Triton RMSNorm / fused add+norm / gated RMSNorm / rotary and its
          jiterator swiglu, mamba_ssm 2.2.4's Triton SSD
          (mamba_chunk_scan_combined) and Triton gated RMSNorm.
  torch   the same model with the authors' pure-PyTorch reference functions
          in their place: fla's rms_norm_ref (plain and gated) and
          rotary_embedding_ref, fla's torch swiglu formula, mamba_ssm's
          ssd_chunk_scan_combined_ref (its exp of masked segment sums
          clamped: fp32 overflow there makes NaN gradients) and gated
          rms_norm_ref, each computing in fp32 from the bf16 inputs and
          storing bf16.
Both paths: Mamba-1's selective_scan_fn (a CUDA extension, not built on the
lent machines) is mamba_ssm's selective_scan_ref on the GPU (fp32 inside,
bf16 out), mamba_inner_fn (fla's MambaMixer fast path, Samba) is mamba_ssm's
mamba_inner_ref on top of it, causal_conv1d_fn is a depthwise conv1d + SiLU
in fp32 stored bf16, the fused mamba_split_conv1d_scan_combined of fla's
Mamba2Mixer (needs causal_conv1d's CUDA extension) is composed of that conv,
the SSD of the path, mamba_ssm's gated RMSNorm of the path and out_proj, and
flash-attn (when not installed) is the masked softmax attention in fp32
stored bf16. With --ext DIR (--path triton only; DIR is carry/ext, holding
selective_scan_cuda and causal_conv1d_cuda built for sm_90 and causal-conv1d's
Python package, see tests/ref/README.md) the triton path runs the real ones
instead: mamba_ssm's selective_scan_fn and mamba_inner_fn on its CUDA scan,
causal-conv1d's causal_conv1d_fn and the fused
mamba_split_conv1d_scan_combined; the metadata's kernels say which ran. The
comparison of the two paths (--against) is the reference
against itself: its counts bound hax's tolerance (bin/hax-check --noise).

Cases (Table 1 sizes; batch: the 2 real-size samples of paper_mamba2_hax,
true lengths 1058 and 268):
  mamba2_base   fla Mamba2Model, configs/mamba2_double_size.json, seeded init
  mamba2_hax    EnhancedMamba2Model, configs/mamba2.json, sign_bin_lsh+key_selection,
                the weights and draws of tests/golden/paper_mamba2_hax
  mamba_hax     EnhancedMambaModel, configs/mamba.json, same pattern,
                the weights and draws of tests/golden/paper_mamba_hax
  samba         fla SambaModel, configs/samba.json, seeded init

usage (GPU machine, see tests/ref/README.md):
  PYTHONPATH=/tmp/site python3 tests/ref/ref_golden_bf16.py --out DIR [--path triton|torch]
      [--ext carry/ext] [--only NAME] [--against DIR_OF_THE_OTHER_PATH] [--repeat] [--device cpu]
writes DIR/NAME.PATH.safetensors; --against prints per tensor the elements
that differ from the other path's file, in bf16 ulps; --repeat runs each case
twice and prints the same for the two runs (is the path deterministic);
--device cpu --path torch is a dry run where there is no GPU (not a golden).
"""
import argparse
import contextlib
import importlib.machinery
import json
import math
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_train import load_joint_recall, use_ext, fake_selective_scan_cuda, check_ext  # noqa: E402

CASES = {
    "mamba2_base": dict(base_arch="mamba2", sparse_arch=None, golden=None, batch="paper_mamba2_hax"),
    "mamba2_hax": dict(base_arch="mamba2", sparse_arch="sign_bin_lsh+key_selection", golden="paper_mamba2_hax",
                       batch="paper_mamba2_hax"),
    "mamba_hax": dict(base_arch="mamba", sparse_arch="sign_bin_lsh+key_selection", golden="paper_mamba_hax",
                      batch="paper_mamba_hax"),
    "samba": dict(base_arch="samba", sparse_arch=None, golden=None, batch="paper_mamba2_hax"),
}
LR, GATE_LOSS_WEIGHT = 1e-3, 0.1


def die(msg):
    raise SystemExit("ref_golden_bf16.py: " + msg)


# ---------------------------------------------------------------- kernels

def setup(a):
    """Imports the reference and puts in the kernels of path a.path. Returns
    (torch, joint_recall module, notes)."""
    if a.ext and (a.path != "triton" or a.device != "cuda"):
        die("--ext: expected --path triton on cuda (the torch path is the reference functions)")
    ext = use_ext(a.ext) if a.ext else None
    if not ext:
        fake_selective_scan_cuda()  # imported by mamba_ssm, never called
    sys.path.insert(0, a.mamba)
    sys.path.insert(0, a.hax)
    import torch
    import torch.nn.functional as F
    if a.device == "cuda" and not torch.cuda.is_available():
        die("needs a CUDA device (or --device cpu --path torch, a dry run)")
    if a.device == "cpu":
        if a.path != "torch":
            die("--device cpu: expected --path torch (the Triton kernels need a GPU)")
        import triton  # its autotuned kernels are imported, never run: no autotuning without a driver
        triton.autotune = lambda *args, **kw: (lambda fn: fn)
    notes = {}

    def attn_fp32(q, k, v, causal, window_size, scale):  # one sequence [T, H, D]; flash-attn's mask rule
        T = q.shape[0]
        i = torch.arange(T, device=q.device)[:, None]
        j = torch.arange(T, device=q.device)[None, :]
        ok = torch.ones(T, T, dtype=torch.bool, device=q.device)
        if causal:
            ok &= j <= i
        if window_size[0] >= 0:
            ok &= j >= i - window_size[0]
        if window_size[1] >= 0:
            ok &= j <= i + window_size[1]
        s = torch.einsum("thd,shd->hts", q.float(), k.float()) * (scale or q.shape[-1] ** -0.5)
        p = torch.softmax(s.masked_fill(~ok, float("-inf")), dim=-1)
        return torch.einsum("hts,shd->thd", p, v.float()).to(q.dtype)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False,
                               window_size=(-1, -1), softmax_scale=None, **kw):
        assert torch.equal(cu_seqlens_q, cu_seqlens_k)
        cu = cu_seqlens_q.tolist()
        return torch.cat([attn_fp32(q[s:e], k[s:e], v[s:e], causal, window_size, softmax_scale)
                          for s, e in zip(cu[:-1], cu[1:])])

    def flash_attn_func(q, k, v, causal=False, window_size=(-1, -1), softmax_scale=None, **kw):
        return torch.stack([attn_fp32(q[b], k[b], v[b], causal, window_size, softmax_scale) for b in range(q.shape[0])])

    real_fa = False
    if a.path == "triton":
        try:
            import flash_attn  # noqa: F401  the real kernel, if the machine has it
            real_fa = True
        except ImportError:
            pass
    if not real_fa:
        fa = types.ModuleType("flash_attn")
        fa.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
        fa.flash_attn_func, fa.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
        sys.modules["flash_attn"] = fa
    notes["flash_attn"] = "flash-attn" if real_fa else "masked softmax attention in fp32, stored bf16"

    import mamba_ssm.ops.selective_scan_interface as ssi
    import mamba_ssm.ops.triton.ssd_combined as ssd
    import mamba_ssm.ops.triton.layernorm_gated as mlg
    jr = load_joint_recall(os.path.join(a.hax, "scripts", "joint_recall.py"))
    import fla.models.mamba.modeling_mamba as flm1
    import fla.models.mamba2.modeling_mamba2 as flm2
    import fla.modules.layernorm as fln
    import fla.modules.layernorm_gated as flg
    import fla.modules.rotary as flr
    import fla.modules.mlp as flmlp
    EM = sys.modules["src.modeling_enhanced_mamba"]
    EM2 = sys.modules["src.modeling_enhanced_mamba2"]

    def conv_fp32(x, weight, bias=None, activation=None, **kw):  # causal_conv1d_fn: fp32 inside, out in x's dtype
        L = x.shape[-1]
        dim, width = weight.shape
        out = F.conv1d(x.float(), weight.float().unsqueeze(1), None if bias is None else bias.float(),
                       padding=width - 1, groups=dim)[..., :L]
        return (out if activation is None else F.silu(out)).to(x.dtype)

    def scan_torch(x, dt, A, B, C, chunk_size, D=None, z=None, seq_idx=None, return_final_states=False,
                   dt_bias=None, dt_softplus=False, dt_limit=(0.0, float("inf")), **kw):
        if seq_idx is not None or tuple(dt_limit) != (0.0, float("inf")) or z is not None:
            die("scan_torch: unexpected arguments (seq_idx, dt_limit %s, z)" % (dt_limit,))
        L = x.shape[1]
        pad = (-L) % chunk_size  # whole chunks; zeros at the end change no earlier output
        if pad:
            x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
        # The ref takes exp of every segment sum and masks the upper triangle
        # after: there exp(positive) overflows fp32 at this length, and the
        # backward of the mask gives 0 * inf = NaN. Every unmasked argument is
        # <= 0 (dA <= 0), so exp(min(x, 0)) changes no value the ref keeps.
        exp = torch.exp
        torch.exp = lambda t, *args, **kw: exp(t.clamp(max=0), *args, **kw)
        try:
            out = ssd.ssd_chunk_scan_combined_ref(x.float(), dt.float(), A.float(), B.float(), C.float(), chunk_size,
                                                  D=None if D is None else D.float(),
                                                  dt_bias=None if dt_bias is None else dt_bias.float(),
                                                  dt_softplus=dt_softplus)
        finally:
            torch.exp = exp
        out = out[:, :L].to(x.dtype).contiguous()
        return (out, None) if return_final_states else out

    scan = ssd.mamba_chunk_scan_combined if a.path == "triton" else scan_torch

    def gated_norm_torch(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
        return mlg.rms_norm_ref(x, weight, bias, z=z, eps=eps, group_size=group_size,
                                norm_before_gate=norm_before_gate, upcast=True)

    gated_norm = mlg.rmsnorm_fn if a.path == "triton" else gated_norm_torch

    def split_conv1d_scan(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size, initial_states=None,
                          seq_idx=None, dt_limit=(0.0, float("inf")), return_final_states=False, activation="silu",
                          rmsnorm_weight=None, rmsnorm_eps=1e-6, outproj_weight=None, outproj_bias=None,
                          headdim=None, ngroups=1, norm_before_gate=True):
        """mamba_split_conv1d_scan_combined's forward, step by step (the fused
        one calls causal_conv1d's CUDA extension)."""
        if initial_states is not None or seq_idx is not None or return_final_states or rmsnorm_weight is None:
            die("split_conv1d_scan: unexpected arguments")
        nheads = D.shape[0]
        dim = nheads * headdim
        dstate = (conv1d_weight.shape[0] - dim) // ngroups // 2
        d_nonssm = (zxbcdt.shape[-1] - 2 * dim - 2 * ngroups * dstate - nheads) // 2
        if d_nonssm != 0:
            die("split_conv1d_scan: d_nonssm %d, expected 0" % d_nonssm)
        b, l, _ = zxbcdt.shape
        z, xBC, dt = torch.split(zxbcdt, [dim, dim + 2 * ngroups * dstate, nheads], dim=-1)
        xBC = conv_fp32(xBC.transpose(1, 2), conv1d_weight, conv1d_bias, activation=activation).transpose(1, 2)
        x, B, C = torch.split(xBC, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
        kw = {} if tuple(dt_limit) == (0.0, float("inf")) else {"dt_limit": dt_limit}
        y = scan(x.reshape(b, l, nheads, headdim), dt, A, B.reshape(b, l, ngroups, dstate),
                 C.reshape(b, l, ngroups, dstate), chunk_size, D=D, z=None, dt_bias=dt_bias, dt_softplus=True, **kw)
        y = gated_norm(y.reshape(b, l, dim), rmsnorm_weight, None, z=z, eps=rmsnorm_eps, group_size=dim // ngroups,
                       norm_before_gate=norm_before_gate)
        return F.linear(y, outproj_weight, outproj_bias)

    def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
        """selective_scan_ref (fp32 inside, out in u's dtype); z upcast as the
        CUDA kernel gates in fp32 (the ref would take silu of the bf16 z in bf16)."""
        return ssi.selective_scan_ref(u, delta, A, B, C, D=D, z=None if z is None else z.float(),
                                      delta_bias=delta_bias, delta_softplus=delta_softplus,
                                      return_last_state=return_last_state)

    if ext:  # the modules imported the real kernels: leave them
        check_ext(a.ext)
        notes.update(ext=ext, selective_scan="mamba_ssm selective_scan_fn (selective_scan_cuda)",
                     mamba_inner="mamba_ssm mamba_inner_fn (causal_conv1d_cuda, selective_scan_cuda)",
                     causal_conv1d="causal-conv1d causal_conv1d_fn (causal_conv1d_cuda)",
                     split_conv1d_scan="mamba_ssm mamba_split_conv1d_scan_combined (fused)")
    else:
        ssi.causal_conv1d_fn = conv_fp32          # mamba_inner_ref's globals
        ssi.selective_scan_fn = selective_scan
        EM.causal_conv1d_fn, EM.selective_scan_fn = conv_fp32, selective_scan
        EM2.causal_conv1d_fn, EM2.mamba_chunk_scan_combined = conv_fp32, scan
        flm1.is_fast_path_available, flm1.mamba_inner_fn = True, ssi.mamba_inner_ref
        flm1.causal_conv1d_fn, flm1.selective_scan_fn = conv_fp32, selective_scan
        flm2.is_fast_path_available = True
        flm2.causal_conv1d_fn, flm2.mamba_chunk_scan_combined = conv_fp32, scan
        flm2.mamba_split_conv1d_scan_combined = split_conv1d_scan
        notes.update(selective_scan="mamba_ssm selective_scan_ref (GPU, fp32 inside)",
                     mamba_inner="mamba_ssm mamba_inner_ref", causal_conv1d="conv1d + SiLU in fp32, stored bf16",
                     split_conv1d_scan="conv, SSD, gated RMSNorm, out_proj composed")
    if a.device == "cpu":  # fla's mixers take their fast paths only for CUDA weights: the same paths here
        def fast(self, hidden_states, cache_params=None, cache_position=None, attention_mask=None):
            return self.cuda_kernels_forward(hidden_states, cache_params, cache_position, attention_mask)
        flm1.MambaMixer.forward = flm2.Mamba2Mixer.forward = fast

    if a.path == "torch":
        def rmsnorm_torch(self, x, residual=None, prenorm=False, residual_in_fp32=False):
            out, res = fln.rms_norm_ref(x, self.weight, self.bias, residual=residual, eps=self.eps, prenorm=True,
                                        upcast=True)
            if not prenorm:
                return out
            rdt = torch.float32 if residual_in_fp32 else (residual.dtype if residual is not None else x.dtype)
            return out, res.to(rdt)
        fln.RMSNorm.forward = rmsnorm_torch
        gated = getattr(flg, "RMSNormGated", None)
        if gated is None:
            die("fla.modules.layernorm_gated has no RMSNormGated")
        gated.forward = lambda self, x, z=None: flg.rms_norm_ref(
            x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
            norm_before_gate=self.norm_before_gate, upcast=True)

        def rotary(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None):
            if not isinstance(seqlen_offsets, int) or cu_seqlens is not None:
                die("rotary: expected an int offset and no cu_seqlens")
            T = x.shape[1]
            return flr.rotary_embedding_ref(x.float(), cos[seqlen_offsets:seqlen_offsets + T].float(),
                                            sin[seqlen_offsets:seqlen_offsets + T].float(), interleaved).to(x.dtype)
        flr.rotary_embedding = rotary

        def swiglu(x, y):  # fla's swiglu_fwd_torch, without torch.compile
            return (F.silu(x.float()) * y).to(x.dtype)
        flmlp.swiglu = swiglu
        flmlp.swiglu_linear = lambda x, y, w, b: F.linear(swiglu(x, y), w, b)  # GatedMLP's (fuse_swiglu)
        notes.update(norms="fla rms_norm_ref / layernorm_gated rms_norm_ref (upcast)", ssd="ssd_chunk_scan_combined_ref (fp32)",
                     rotary="fla rotary_embedding_ref (fp32)", swiglu="silu(x.float()) * y")
    else:
        notes.update(norms="fla Triton", ssd="mamba_ssm Triton mamba_chunk_scan_combined", rotary="fla Triton",
                     swiglu="fla jiterator")
    return torch, jr, notes


# ---------------------------------------------------------------- one case

class Inject:
    """torch.randn / torch.rand_like return the golden draws in call order (in
    the dtype and device asked for: bf16 on the GPU); the tensors handed out
    are kept, and so are the products torch.matmul(., H) with a hash matrix
    handed out (the LSH projections HQ2, HK2, in that order per layer)."""

    def __init__(self, torch, draws):
        self.torch, self.draws, self.used, self.proj = torch, list(draws), [], []

    def __enter__(self):
        torch = self.torch
        self.saved = torch.randn, torch.rand_like, torch.matmul
        matmul = torch.matmul

        def matmul_seen(x, y, *args, **kw):
            out = matmul(x, y, *args, **kw)
            for name, t in self.used:
                if y is t:
                    self.proj.append((name, out.detach()))
            return out

        def take(kind, shape, dtype, device):
            if not self.draws:
                die("the reference drew more random tensors than the golden holds (%s %s)" % (kind, tuple(shape)))
            k, name, t = self.draws.pop(0)
            if k != kind or tuple(t.shape) != tuple(shape):
                die("draw mismatch: the reference wants %s%s, the golden has %s %s%s" % (
                    kind, tuple(shape), name, k, tuple(t.shape)))
            out = t.to(dtype=dtype or torch.get_default_dtype(), device=device)
            self.used.append((name, out))
            return out

        def randn(*size, dtype=None, device=None, **kw):
            shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
            return take("randn", shape, dtype, device)

        def rand_like(x, dtype=None, **kw):
            return take("rand_like", x.shape, dtype or x.dtype, x.device)

        torch.randn, torch.rand_like, torch.matmul = randn, rand_like, matmul_seen
        return self

    def __exit__(self, *exc):
        self.torch.randn, self.torch.rand_like, self.torch.matmul = self.saved
        if exc[0] is None and self.draws:
            die("%d golden draws unused" % len(self.draws))


class BlockInputs:
    """Forward pre-hooks on the model's blocks and norm_f: the residual stream
    h entering block i (MODEL.md 1.5, 4.2) as dbg.layers.{i}.hidden_in and the
    input of norm_f as dbg.norm_f.hidden_in, bf16 [B, L, d], kept as float32
    copies. Every block of these models (fla MambaBlock, Mamba2Block,
    SambaBlock, the Enhanced blocks) takes h alone as its first argument and
    returns the new h in bf16 (residual_in_fp32 adds in fp32 inside the block
    and casts back; Samba's fused add+norm pairs stay inside its block), so
    that argument is h itself."""

    def __init__(self, torch, model, case, nl):
        self.torch, self.case, self.seen, self.handles = torch, case, {}, []
        if len(model.layers) != nl:
            die("%s: the model has %d blocks, its config %d layers" % (case, len(model.layers), nl))
        mods = [("dbg.layers.%d.hidden_in" % i, b) for i, b in enumerate(model.layers)]
        for key, mod in mods + [("dbg.norm_f.hidden_in", model.norm_f)]:
            self.handles.append(mod.register_forward_pre_hook(self.keep(key), with_kwargs=True))

    def keep(self, key):
        def pre(module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            if not self.torch.is_tensor(h) or h.dtype != self.torch.bfloat16:
                die("%s: %s: expected a bfloat16 tensor entering %s, found %s" % (
                    self.case, key, type(module).__name__, getattr(h, "dtype", type(h).__name__)))
            if key in self.seen:  # gradient checkpointing would call a block again
                die("%s: %s: the module was called twice in one forward" % (self.case, key))
            self.seen[key] = h.detach().float().cpu()
        return pre

    def collect(self):
        """Removes the hooks; returns {key: tensor}, all of them present."""
        for h in self.handles:
            h.remove()
        if len(self.seen) != len(self.handles):
            die("%s: %d of %d block / norm_f inputs seen" % (self.case, len(self.seen), len(self.handles)))
        return self.seen


def read_golden(torch, path):
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["hax_case"])


def run_case(torch, jr, a, name):
    spec = CASES[name]
    gdir = os.path.join(a.golden, "")
    B, bmeta = read_golden(torch, gdir + spec["batch"] + ".safetensors")
    G, gmeta = read_golden(torch, gdir + spec["golden"] + ".safetensors") if spec["golden"] else (None, None)
    base, sparse = spec["base_arch"], spec["sparse_arch"]
    # joint_recall.py main(): the config file and the three fields it sets
    cfile = base if (sparse or base == "samba") else base + "_double_size"
    config = json.load(open(os.path.join(a.hax, "configs", cfile + ".json")))
    config.update(sparse_arch=sparse, sparse_keys=64, num_hash=8)
    jr.set_seed(a.seed)
    with contextlib.redirect_stdout(sys.stderr):  # its parameter count
        model = jr.load_model(base, sparse, config, a.device)
    params = dict(model.named_parameters())
    for n, p in params.items():
        if p.dtype != torch.bfloat16:
            die("%s: parameter %s is %s after load_model, expected bfloat16" % (name, n, p.dtype))
    if G is not None:  # the golden weights, rounded to bf16 as the cast rounds them
        missing = sorted(set(params) - set(G))
        if missing:
            die("%s: the golden %s lacks parameters %s" % (name, spec["golden"], missing))
        with torch.no_grad():
            for n, p in params.items():
                if tuple(G[n].shape) != tuple(p.shape):
                    die("%s: %s: golden shape %s, model %s" % (name, n, tuple(G[n].shape), tuple(p.shape)))
                p.copy_(G[n].to(torch.float32).to(torch.bfloat16))
    weights = {n: p.detach().float().cpu().clone() for n, p in params.items()}
    ids, lm = B["input_ids"].long(), B["loss_mask"].long()
    cfg = model.config.to_dict()
    nl = cfg["num_hidden_layers"]
    draws = []
    for i in range(nl):
        if G is not None and "rand.layers.%d.hash_matrix" % i in G:
            draws.append(("randn", "rand.layers.%d.hash_matrix" % i, G["rand.layers.%d.hash_matrix" % i]))
        if G is not None and "rand.layers.%d.ks_noise" % i in G:
            draws.append(("rand_like", "rand.layers.%d.ks_noise" % i, G["rand.layers.%d.ks_noise" % i]))

    trainer = jr.Trainer(model, torch.nn.CrossEntropyLoss(), a.device)
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=LR)  # joint_recall.py's AdamW, lr of the goldens
    trainer.model.train()
    seen = {}
    hook = model.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o["last_hidden_state"]))
    hooks = BlockInputs(torch, model, name, nl)
    with Inject(torch, draws) as inj:
        loss, gate_loss, acc = trainer.forward({"inputs": ids, "mask": lm})
    hook.remove()
    block_in = hooks.collect()
    total = loss + gate_loss * GATE_LOSS_WEIGHT  # joint_recall.py's objective (grad_acc 1)
    total.backward()
    hidden = seen["h"].detach()
    with torch.no_grad():
        logits = torch.matmul(hidden, trainer.output_layer)  # Trainer.forward's logits, recomputed (same op)
    grads = {}
    for n, p in params.items():
        if p.grad is None:
            die("%s: parameter %s got no gradient (torch's AdamW would skip it)" % (name, n))
        grads[n] = p.grad.detach().float().cpu().clone()
    optimizer.step()
    out = {}
    for n, p in params.items():
        st = optimizer.state[p]
        if st["exp_avg"].dtype != torch.bfloat16:
            die("%s: %s: exp_avg is %s, expected bfloat16" % (name, n, st["exp_avg"].dtype))
        out[n] = weights[n]
        out["grad." + n] = grads[n]
        out["adamw." + n] = p.detach().float().cpu()
        out["adamw.exp_avg." + n] = st["exp_avg"].float().cpu()
        out["adamw.exp_avg_sq." + n] = st["exp_avg_sq"].float().cpu()
    out["input_ids"], out["loss_mask"] = ids.contiguous(), lm.contiguous()
    valid = (ids[:, :-1] != 3).to(a.device)
    for key, t in inj.used:
        out[key] = t.float().cpu()
        if key.endswith("ks_noise"):  # the picks: the reference's own topk on that bf16 tensor
            k = cfg["sparse_keys"] // len(sparse.split("+"))
            idx = t.masked_fill(valid == 0, -1.0).topk(k, dim=1).indices
            out[key.replace("ks_noise", "ks_selected_idx")] = idx.long().cpu()
    for key, _ in inj.used:  # the LSH projections and buckets (sign bits, EM:465-467)
        P = [p for n, p in inj.proj if n == key]
        if not key.endswith("hash_matrix"):
            continue
        if len(P) != 2:
            die("%s: %s: expected 2 projections (queries, keys), found %d" % (name, key, len(P)))
        bit = 1 << torch.arange(P[0].shape[-1], device=P[0].device, dtype=torch.long)
        for t, proj in zip("qk", P):
            pre = key.replace("rand.", "dbg.").replace("hash_matrix", "")
            out[pre + "h%s_proj" % t] = proj.float().cpu()
            out[pre + "%s_bucket" % t] = ((proj > 0).long() * bit).sum(-1).cpu()
    for key, h in block_in.items():
        if tuple(h.shape) != tuple(hidden.shape):
            die("%s: %s: shape %s, expected that of last_hidden_state %s" % (name, key, tuple(h.shape),
                                                                              tuple(hidden.shape)))
        out[key] = h
    out["out.last_hidden_state"] = hidden.float().cpu()
    out["out.logits"] = logits.float().cpu()
    gl = gate_loss.detach() if torch.is_tensor(gate_loss) else torch.tensor(float(gate_loss))
    for key, v in (("out.loss", loss.detach()), ("out.gate_loss", gl), ("out.total_loss", total.detach()),
                   ("out.acc", acc.detach())):
        out[key] = v.double().cpu().reshape(())
    lens = (ids[:, :-1] != 3).sum(1).tolist()
    cfg.setdefault("data_max_length", 2048)  # the Enhanced configs' default; the fla ones lack it
    meta = dict(case=name + "_bf16", base_arch=base, sparse_arch=sparse, model_class=type(model).__name__,
                config=cfg, init_seed=None if G is not None else a.seed,
                weights="golden %s, rounded to bf16" % spec["golden"] if G is not None else
                "joint_recall.load_model after set_seed(%d)" % a.seed,
                batch_from=spec["batch"], precision="bf16-pure", compute_dtype="bfloat16", path=a.path,
                storage="float tensors F32 holding bf16 values; losses and acc F64 scalars holding the bf16 / "
                        "float32 values; ints I64",
                gate_loss_weight=GATE_LOSS_WEIGHT, adamw=dict(lr=LR, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01),
                batch=list(ids.shape), true_lengths=lens, model_seq_len=ids.shape[1] - 1,
                torch=torch.__version__, triton=__import__("triton").__version__,
                gpu=torch.cuda.get_device_name() if a.device == "cuda" else "none (cpu dry run)", kernels=a.notes)
    return out, meta


# ---------------------------------------------------------------- comparisons

def family(key):
    for f in ("adamw.exp_avg_sq.", "adamw.exp_avg.", "adamw.", "grad.", "dbg.", "rand.", "out."):
        if key.startswith(f):
            return f + "*"
    return "parameters"


def ulp_table(torch, A, Bt, title):
    """Per float tensor of both: elements, differing, > 1 bf16 ulp, max ulps,
    normwise relative difference; then the worst tensor of each family."""
    print(title)
    print("  %-44s %9s %9s %9s %9s %10s" % ("tensor", "elements", "differ", ">1 ulp", "max ulps", "rel"))
    worst = {}
    for key in sorted(A):
        if key not in Bt or not A[key].is_floating_point() or A[key].dtype == torch.float64:
            if key in Bt and A[key].dtype == torch.float64:
                x, y = A[key].item(), Bt[key].item()
                print("  %-44s %9d %9d %9s %9s %10.2e" % (key, 1, int(x != y), "", "", abs(x - y) / max(abs(y), 1e-30)))
            continue
        x, y = A[key].float().reshape(-1), Bt[key].float().reshape(-1)

        def ordered(t):
            i = t.view(torch.int32).long()
            return torch.where(i < 0, -(i & 0x7fffffff), i)
        d = (ordered(x) - ordered(y)).abs() >> 16
        rel = ((x - y).double().norm() / y.double().norm().clamp_min(1e-30)).item()
        row = (x.numel(), int((d > 0).sum()), int((d > 1).sum()), int(d.max()) if d.numel() else 0, rel)
        print("  %-44s %9d %9d %9d %9d %10.2e" % ((key,) + row))
        w = worst.setdefault(family(key), [0.0, "", 0.0, ""])
        if rel > w[0]:
            w[0], w[1] = rel, key
        if row[2] / max(row[0], 1) > w[2]:
            w[2], w[3] = row[2] / max(row[0], 1), key
    for f in sorted(worst):
        w = worst[f]
        print("  worst of %-20s rel %.2e (%s), beyond 1 ulp %.2f%% (%s)" % (f, w[0], w[1], 100 * w[2], w[3]))
    sys.stdout.flush()


def plain(x):
    """JSON without Infinity / NaN (the goldens store "inf"), tuples as lists."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def save(path, out, meta):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in out.items()}, path,
              metadata={"hax_case": json.dumps(plain(meta), default=str, allow_nan=False)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--path", choices=["triton", "torch"], default="triton")
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--against", default=None, help="a folder holding the other path's files: print the ulp table")
    ap.add_argument("--repeat", action="store_true", help="run each case twice and print the ulp table of the two")
    ap.add_argument("--golden", default="tests/golden")
    ap.add_argument("--hax", default="carry/hax", help="DeepGraphLearning/HAX (git archive)")
    ap.add_argument("--mamba", default="carry/mamba", help="state-spaces/mamba v2.2.4 (Triton SSD only)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ext", default=None, help="folder of the CUDA extensions selective_scan_cuda and "
                    "causal_conv1d_cuda (carry/ext): the triton path runs them (default: their substitutes)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: a dry run of the torch path where there is no GPU (not a golden)")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n] or list(CASES)
    for n in names:
        if n not in CASES:
            die("--only: expected one of %s, found '%s'" % (", ".join(CASES), n))
    torch, jr, a.notes = setup(a)
    os.makedirs(a.out, exist_ok=True)
    for name in names:
        out, meta = run_case(torch, jr, a, name)
        path = os.path.join(a.out, "%s.%s.safetensors" % (name, a.path))
        save(path, out, meta)
        print("%s: %s path: loss %.6g, gate_loss %.6g, acc %.6g -> %s" % (
            name, a.path, out["out.loss"].item(), out["out.gate_loss"].item(), out["out.acc"].item(), path), flush=True)
        if a.repeat:
            again, _ = run_case(torch, jr, a, name)
            ulp_table(torch, again, out, "%s: %s path, second run against the first" % (name, a.path))
        if a.against:
            other = "triton" if a.path == "torch" else "torch"
            T, _ = read_golden(torch, os.path.join(a.against, "%s.%s.safetensors" % (name, other)))
            ulp_table(torch, out, T, "%s: %s path against the %s path" % (name, a.path, other))


if __name__ == "__main__":
    main()
