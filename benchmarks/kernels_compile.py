"""The fused kernels in kernels/ compiled ahead of time for NVIDIA GPUs, at the specialisations the five scripts
launch: registers per thread, spills, and the occupancy the registers allow. No GPU is needed.

    python benchmarks/kernels_compile.py            # the table (tests/test_kernels_compile.py asserts it)

1. Record: the scripts run (RUNS: whole train_steps at the CPU presets, the generators at the paper settings), in
   fp32 and under bf16 autocast, their fused ops computing with the PyTorch references. Each op call whose inputs
   are new (shapes, strides, dtypes, requires_grad, the other arguments) is replayed through the Triton path,
   forward and backward, with every kernel's `run` (the launch point of `kernel[grid](...)`) replaced by a
   recorder: a launch adds its specialisation, as Triton's JIT derives it from the arguments (pointer types and
   16-byte alignment, integers equal to 1 or divisible by 16, the constexprs, num_warps), and runs nothing; the
   data never enters a specialisation. The bf16 calls are replayed in fp16 too, and `widest` adds each kernel's
   widest channel block. Without CUDA the Triton path is the interpreter's (TRITON_INTERPRET=1, set here).
2. Compile: every specialisation for sm_80, sm_90 (and sm_100 where the installed Triton targets it) with
   triton.compile, in one process per core (the interpreter's kernels are not compilable, so the workers import
   kernels/ without it); the cubin's registers and stack frame (spills) come from cuobjdump, shipped in Triton's
   wheel. Triton's cache (~/.triton/cache) keeps the cubins, so a second run only compiles what changed.
3. Print one row per kernel and target.
"""
import argparse
import contextlib
import importlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if __name__ == "__main__" and "--worker" not in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ARCHS = (80, 90, 100)
MODULES = ("kernels.adalin", "kernels.blend", "kernels.boxmask")
# (script, setting, flags) of every recorded run. At its CPU preset, each script runs two whole train_steps, at the
# start and at the end of training (UAIT's stage 2 freezes the attention): every call, with every pattern of
# inputs that require grad. At its paper settings, the generator alone, translate(x) forward and backward on one
# image: it holds every fused op call, and what the paper's sizes change is the calls' shapes (AdaLIN's channel
# counts), which the generator's own calls show. It runs at 128 px rather than 256 (DA-GAN at its own 32) and with
# one residual block (the blocks repeat one call): every map is then 32×32 or larger, as at 256 px, so H×W stays
# divisible by 16 and the constexpr blocks, which take H×W only through min(1024, next_pow2(H×W)) (AdaLIN) or not
# at all, stay the same. Batch 1, U-GAT-IT's own in both settings: no other kernel argument depends on the batch.
# GuideGAN calls no fused op: its preset run shows that it launches none (and would record one it came to call).
PAPER = ["--img_size", "128", "--batch_size", "1", "--n_res", "1"]
RUNS = [("ugatit", "preset", []), ("ugatit", "paper", PAPER),
        ("attentiongan", "preset", ["--scheme", "I"]), ("attentiongan", "preset", ["--scheme", "II"]),
        ("attentiongan", "paper", PAPER + ["--scheme", "I"]), ("attentiongan", "paper", PAPER + ["--scheme", "II"]),
        ("uait", "preset", []), ("uait", "paper", PAPER),
        ("guidegan", "preset", []),
        ("dagan", "preset", ["--batch_size", "2"]), ("dagan", "paper", ["--batch_size", "2"])]
AMP = ("off", "bf16")


def kernels():
    """Every Triton kernel in kernels/ by (module, name): the ones a launch can name."""
    import triton
    found = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if isinstance(value, triton.runtime.KernelInterface):
                found[name, attr] = value
    return found


def kernels_by_name():
    return {name: kernel for (_, name), kernel in kernels().items()}


def launched():
    """The names of the kernels the op files launch (`name[grid](...)`), not the device functions they call."""
    import re
    sources = "".join(inspect.getsource(importlib.import_module(m)) for m in MODULES)
    return {name for name in kernels_by_name() if re.search(rf"\b{name}\[", sources)}


def specialisation(kernel, args, kwargs):
    """What Triton's JIT compiles a launch for: per parameter (type, attribute) from Triton's own specialiser, as
    JITFunction.run calls it (("constexpr", value) for constexprs and integers equal to 1; "D" where a pointer is
    16-byte aligned or an integer divisible by 16), and the launch options (num_warps). Hashable."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    params = inspect.signature(kernel.fn).parameters
    bound = inspect.signature(kernel.fn).bind(*args, **{k: v for k, v in kwargs.items() if k in params})
    types = tuple(("constexpr", value) if "constexpr" in str(params[name].annotation) else
                  tuple(native_specialize_impl(BaseBackend, value, False, True, True))
                  for name, value in bound.arguments.items())
    return types, tuple(sorted((k, v) for k, v in kwargs.items() if k not in params))


OPS = {("kernels.adalin", "adalin"), ("kernels.blend", "blend"), ("kernels.blend", "blend_softmax"),
       ("kernels.boxmask", "box_crop")}


@contextlib.contextmanager
def launches_recorded(found):
    """Within it, a kernel launch adds ((module, name), specialisation) to the set `found` instead of running:
    what Triton compiles depends on the arguments' types, alignment and integer values, never on the data."""
    def wrap(key, kernel):
        def recorded(*args, grid, warmup, **kwargs):
            found.add((key, specialisation(kernel, args, kwargs)))
        return recorded
    every = kernels()
    for key, kernel in every.items():
        kernel.run = wrap(key, kernel)
    try:
        yield found
    finally:
        for kernel in every.values():
            del kernel.run


def _like(value, dtypes):
    """An uninitialised tensor with value's shape, strides, storage offset (and so alignment), dtype (mapped by
    `dtypes`) and requires_grad; anything else as it is."""
    if not isinstance(value, torch.Tensor):
        return value
    storage = torch.empty(value.storage_offset() + sum((n - 1) * s for n, s in zip(value.shape, value.stride())) + 1,
                          dtype=dtypes.get(value.dtype, value.dtype))
    return storage.as_strided(value.shape, value.stride(), value.storage_offset()).requires_grad_(value.requires_grad)


def _key(value):
    if isinstance(value, torch.Tensor):
        return value.shape, value.stride(), value.storage_offset(), value.dtype, value.requires_grad
    return repr(value)


def replay(op, args, found, dtypes={}):
    """op's Triton path on inputs like args, with its launches recorded into `found`: the forward, and where the
    call records a graph (grad mode on, an input requiring grad), the backward."""
    fresh = [_like(a, dtypes) for a in args]
    with launches_recorded(found), _backend("triton"), torch.autocast("cpu", enabled=False):
        out = op(*fresh)
        wrt = [t for t in fresh if isinstance(t, torch.Tensor) and t.requires_grad]
        if out.requires_grad:  # not under no_grad
            torch.autograd.grad(out, wrt, torch.empty_like(out))


@contextlib.contextmanager
def op_calls_replayed(found):
    """Within it, the paper scripts' calls of the fused ops compute their values with the PyTorch reference (fast
    on CPU), and each call whose inputs are new in shape, strides, dtype, requires_grad or the other arguments is
    replayed through the Triton path (`replay`)."""
    seen = set()
    papers = [importlib.import_module(script) for script in dict.fromkeys(s for s, _, _ in RUNS)]
    ops = [getattr(importlib.import_module(m), name) for m, name in OPS]
    patched = [(paper, attr, value) for paper in papers for attr, value in vars(paper).items()
               if any(value is op for op in ops)]

    def wrap(op):
        def called(*args):
            key = (op.__name__, *map(_key, args))
            if key not in seen:
                seen.add(key)
                replay(op, args, found)
                if any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args):
                    replay(op, args, found, {torch.bfloat16: torch.float16})
            with _backend("torch"):
                return op(*args)
        return called
    for paper, attr, op in patched:
        setattr(paper, attr, wrap(op))
    try:
        yield found
    finally:
        for paper, attr, op in patched:
            setattr(paper, attr, op)


@contextlib.contextmanager
def _backend(choice):
    before = os.environ.get("ATTNGAN_KERNELS")
    os.environ["ATTNGAN_KERNELS"] = choice
    try:
        yield
    finally:
        if before is None:
            del os.environ["ATTNGAN_KERNELS"]
        else:
            os.environ["ATTNGAN_KERNELS"] = before


def run(script, setting, flags, amp):
    """The script's model at the setting (RUNS) on random images: at the preset two train_steps, at progress 0 and
    1; at the paper settings translate(x) forward and backward."""
    from common.train import build_parser, seed_everything
    paper = importlib.import_module(script)
    parser = build_parser(script, "", paper.DEFAULTS)
    paper.add_arguments(parser)
    args = parser.parse_args(flags + ["--amp", amp])
    if setting == "preset":
        for dest, value in paper.CPU_PRESET.items():
            if dest != "dataset" and f"--{dest}" not in flags:
                setattr(args, dest, value)
    seed_everything(0)
    model = paper.make_model(args, torch.device("cpu"))
    shape = (args.batch_size, 3, args.img_size, args.img_size)
    batch = [torch.rand(shape) * 2 - 1, torch.rand(shape) * 2 - 1]
    if getattr(model, "batch_info", False):  # per-image indices (GuideGAN's cache) and labels (DA-GAN)
        index, label = torch.arange(args.batch_size), torch.randint(10, (args.batch_size,))
        batch.append({"index_A": index, "index_B": index, "label_A": label, "label_B": label})
    for progress in (0.0, 1.0) if setting == "preset" else ():
        model.progress = progress
        with model.amp.autocast():
            model.train_step(*batch)
    if setting == "paper":
        with model.amp.autocast():
            outputs = [t for t in model.translate(batch[0]) if t is not None]
        sum(t.float().sum() for t in outputs).backward()


def record(runs=RUNS, amps=AMP):
    """The specialisations the runs launch: a sorted list of ((module, name), specialisation)."""
    found = set()
    with op_calls_replayed(found):
        for script, setting, flags in runs:
            for amp in amps:
                run(script, setting, flags, amp)
    return sorted(found, key=repr)


def widest():
    """The specialisations at each kernel's widest channel block, which the scripts' RGB images never reach: every
    op at a channel count above its kernels' block (blend, box crop: 33, a masked last block; AdaLIN: 129) in
    fp32, bf16 and fp16, forward and backward. The registers grow with the block, so these are the most a channel
    count can cost. (Channel counts divisible by 16, which Triton specialises on, came within 2 registers of these at
    32 and 256, and cost a fifth more compile time.)"""
    from kernels.adalin import adalin
    from kernels.blend import blend, blend_softmax
    from kernels.boxmask import box_crop
    found = set()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        def t(*shape):
            return torch.empty(*shape, dtype=dtype, requires_grad=True)
        replay(blend, [t(2, 33, 32, 32), t(2, 33, 32, 32), t(2, 1, 32, 32)], found)
        replay(blend_softmax, [t(2, 33, 32, 32), t(2, 9, 33, 32, 32), t(2, 10, 32, 32)], found)
        replay(box_crop, [t(2, 33, 32, 32), t(2, 1, 2), t(2, 1, 2), 20.0], found)
        replay(adalin, [t(2, 129, 32, 32), t(1, 129, 1, 1), t(2, 129), t(2, 129)], found)
    return sorted(found, key=repr)


def has_nvidia_backend():
    """Whether the installed Triton can compile for NVIDIA GPUs (its wheel's CUDA backend, with ptxas)."""
    try:
        import triton.backends
        return "nvidia" in triton.backends.backends
    except Exception:
        return False


def archs():
    """The targets: sm_80 and sm_90, and sm_100 where this Triton's CUDA backend knows it."""
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.backends.compiler import GPUTarget
    known = []
    for arch in ARCHS:
        try:
            CUDABackend(GPUTarget("cuda", arch, 32)).parse_options({})
            known.append(arch)
        except Exception:
            pass
    return known


def resources(cubin):
    """(registers per thread, stack bytes per thread) of the one kernel in a cubin, from cuobjdump -res-usage."""
    import re
    from triton import knobs
    tool = knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return int(m[1]), int(m[2])


def compile_one(job):
    """Compile one (kernel, specialisation, arch) to cubin: its registers, stack bytes, num_warps, and the barriers
    the kernel's code asks for (tl.debug_barrier, in the Triton IR: the compiler adds its own later)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    (module, name), (types, options), arch = job
    fn = getattr(importlib.import_module(module), name)
    target = GPUTarget("cuda", arch, 32)
    signature = {p: t[0] for p, t in zip(fn.arg_names, types)}
    constexprs = {(i,): t[1] for i, t in enumerate(types) if t[0] == "constexpr"}
    attrs = {(i,): CUDABackend.parse_attr(t[1]) for i, t in enumerate(types) if isinstance(t[1], str)}
    compiled = triton.compile(triton.compiler.ASTSource(fn, signature, constexprs, attrs), target=target,
                              options=dict(options))
    return (*resources(compiled.asm["cubin"]), compiled.metadata.num_warps, compiled.asm["ttir"].count("ttg.barrier"))


def _worker():
    """`--worker`: compile the jobs, one JSON line each on stdin as they come, one JSON result per line on stdout."""
    for line in sys.stdin:
        job = json.loads(line)
        try:
            print(json.dumps([job, compile_one(job), None]), flush=True)
        except Exception as e:  # reported, not raised: the table names every failure
            print(json.dumps([job, None, f"{type(e).__name__}: {str(e)[:300]}"]), flush=True)


class Compiler:
    """Worker processes, one per core, that compile jobs as they are submitted (round robin: the specialisations of
    one kernel cost alike), so that compiling overlaps the recording of what comes next."""

    def __init__(self, targets, processes=os.cpu_count()):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns unless told; 1 is its default and ours
        self.targets, self.sent, self.outputs = targets, 0, [tempfile.TemporaryFile("w+") for _ in range(processes)]
        self.workers = [subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=out,
                                         text=True, env=env, cwd=ROOT) for out in self.outputs]

    def submit(self, found):
        for key, spec in found:
            for arch in self.targets:
                worker = self.workers[self.sent % len(self.workers)]
                worker.stdin.write(json.dumps([key, spec, arch]) + "\n")
                worker.stdin.flush()
                self.sent += 1

    def results(self):
        """[(job, (registers, stack, warps, barriers) or None, error or None)] of every job submitted."""
        for w in self.workers:
            w.stdin.close()
            if w.wait():
                raise RuntimeError(f"a compile worker exited with {w.returncode}")
        lines = []
        for out in self.outputs:
            out.seek(0)
            lines += [json.loads(line) for line in out]
            out.close()
        return lines


def compile_all(found, targets):
    compiler = Compiler(targets)
    compiler.submit(found)
    return compiler.results()


def occupancy(registers, warps, arch):
    """The share of an SM's warp slots that programs of `warps` warps at `registers` per thread can fill, limited by
    registers alone: 64K registers per SM, allocated per warp in units of 256; 64 warp slots (48 on sm_86/89, not
    targeted here) and at most 32 programs per SM."""
    per_warp = -(-registers * 32 // 256) * 256
    programs = min(65536 // per_warp // warps, 32)
    return min(programs * warps, 64) / 64


def table(results):
    """One markdown row per kernel and target: specialisations, registers (min–max), the largest stack frame
    (spills), warps, and the lowest occupancy; then every failure."""
    rows, failed = {}, []
    for (key, spec, arch), got, error in results:
        if got is None:
            failed.append(f"{key[1]} sm_{arch}: {error}")
            continue
        rows.setdefault((key[1], arch), []).append(got)
    lines = ["| kernel | target | specialisations | registers | spill bytes | warps | occupancy |",
             "|---|---|---|---|---|---|---|"]
    for (name, arch), got in sorted(rows.items()):
        regs = [g[0] for g in got]
        warps = sorted({g[2] for g in got})
        lowest = min(occupancy(r, w, arch) for r, _, w, _ in got)
        lines.append(f"| {name} | sm_{arch} | {len(got)} | {min(regs)}-{max(regs)} | {max(g[1] for g in got)} | "
                     f"{'/'.join(map(str, warps))} | {lowest:.0%} |")
    return "\n".join(lines + [f"FAILED {f}" for f in failed])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    if parser.parse_args().worker:
        return _worker()
    if not has_nvidia_backend():
        sys.exit("kernels_compile: the installed Triton has no NVIDIA backend to compile for")
    torch.set_num_threads(1)
    compiler = Compiler(archs())
    wide = widest()
    compiler.submit(wide)
    compiler.submit(sorted(set(record()) - set(wide), key=repr))
    print(table(compiler.results()))


if __name__ == "__main__":
    main()
