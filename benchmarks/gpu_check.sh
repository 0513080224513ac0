#!/usr/bin/env bash
# What only a CUDA GPU can show, as one markdown report on stdout (about 5-8 minutes on one GPU):
#   1. the tests on CUDA: the kernels' tests (Triton compiled for the GPU, not interpreted), the --amp tests and
#      tests/test_gpu.py (all five scripts training on CUDA under bf16 and fp16, exact resume with --deterministic);
#   2. every fused kernel compiled for sm_80/sm_90(/sm_100) at the scripts' specialisations: registers, spills and
#      the occupancy the registers allow (benchmarks/kernels_compile.py); each fused op against its eager reference
#      and torch.compile of it: time beside the time its bytes take at HBM peak, GB/s, % of peak
#      (benchmarks/kernels.py);
#   3. seconds per training iteration and peak GPU memory of the five scripts at 256 px, paper settings, fp32 and
#      bf16 (benchmarks/train_step.py);
#   4. with two GPUs or more, a 2-process torchrun run.
# Without CUDA it stops with an error: a report of nothing would read as a pass.
#     bash benchmarks/gpu_check.sh | tee gpu_report.md
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA GPU here: run this on a machine with one (and a CUDA build of torch)" >&2
    exit 1
fi
failed=0  # any part that fails makes the exit status 1; the report goes on
step() { "$@" || { failed=1; echo "| **FAILED**: \`$*\` |"; }; }

echo "# GPU check, $(date -u +%Y-%m-%d)"
echo
python -c "import torch, triton; print(f'{torch.cuda.get_device_name()}, {torch.cuda.device_count()} GPU(s), torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}')"
echo
echo "## Tests on CUDA"
echo '```'
timeout 300 python -m pytest -q -p no:cacheprovider tests/test_kernels_adalin.py tests/test_kernels_blend.py \
    tests/test_kernels_boxmask.py tests/test_kernels_grid.py tests/test_amp.py tests/test_gpu.py 2>&1 | tail -n 15 ||
    failed=1
echo '```'
echo
echo "## Kernels compiled: registers, spills, occupancy (the table tests/test_kernels_compile.py asserts)"
echo
step timeout 300 python benchmarks/kernels_compile.py
echo
echo "## Kernels: measured time beside the time their bytes take at peak bandwidth"
step timeout 240 python benchmarks/kernels.py
echo
echo "## Training iteration at 256 px (batch: each script's default; 5 timed after 2)"
echo
echo "| config | params | mean s | min s | peak GiB |"
echo "|---|---|---|---|---|"
for config in "ugatit --light True" "ugatit --light False" attentiongan uait guidegan dagan; do
    for amp in off bf16; do
        step timeout 120 python benchmarks/train_step.py $config --img_size 256 --device cuda --amp $amp --row \
            2>/dev/null
    done
done
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    echo
    echo "## torchrun, 2 processes"
    out=$(mktemp -d)
    timeout 300 torchrun --standalone --nproc_per_node 2 ugatit.py --light True --img_size 64 --iteration 20 \
        --print_freq 10 --save_freq 10 --result_dir "$out" 2>&1 | tr '\r' '\n' | grep -E "done|evaluation|error" ||
        failed=1
    rm -rf "$out"
fi
exit $failed
