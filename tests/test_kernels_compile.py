"""Every fused kernel compiled ahead of time for NVIDIA GPUs, without one: sm_80 and sm_90 (and sm_100 where the
installed Triton targets it), at every specialisation the five scripts launch, recorded from their own calls at
their CPU presets and paper settings in fp32 and under bf16 autocast (those calls again in fp16), and at each
kernel's widest channel block in the three types (benchmarks/kernels_compile.py). Each must compile to a cubin, and none may spill
registers (cuobjdump's stack frame 0). The table of registers is printed (pytest -s)."""
import pytest

from benchmarks import kernels_compile as kc

pytestmark = pytest.mark.skipif(not kc.has_nvidia_backend(),
                                reason="the installed Triton has no NVIDIA backend (CUDA compiler, ptxas) to compile for")


@pytest.fixture(scope="module")
def compiled():
    compiler = kc.Compiler(kc.archs())
    wide = kc.widest()
    compiler.submit(wide)  # compiled while the scripts are recorded
    found = wide + sorted(set(kc.record()) - set(wide), key=repr)
    compiler.submit(found[len(wide):])
    results = compiler.results()
    print("\n" + kc.table(results))
    return found, results


def test_targets_include_sm_80_and_sm_90():
    assert {80, 90} <= set(kc.archs())


def test_every_kernel_is_launched_in_fp32_bf16_and_fp16(compiled):
    found, _ = compiled
    types = {(name, t) for (_, name), (args, _) in found for t, _ in args if t.startswith("*")}  # pointers
    assert kc.launched()
    assert {(name, t) for name in kc.launched() for t in ("*fp32", "*bf16", "*fp16")} <= types


def test_every_specialisation_compiles_for_every_target(compiled):
    found, results = compiled
    assert len(results) == len(found) * len(kc.archs())
    assert [error for _, _, error in results if error] == [], kc.table(results)


def test_no_kernel_spills_registers(compiled):
    _, results = compiled
    spills = [(job[0][1], f"sm_{job[2]}", got) for job, got, _ in results if got and got[1]]
    assert spills == [], kc.table(results)


def test_softmax_backward_separates_its_channel_blocks_by_a_barrier(compiled):
    """_softmax_bwd adds each channel block's share of dl to what the previous block stored in DL; the compiler may
    give the reload other threads than the store, so a barrier must order them."""
    _, results = compiled
    barriers = {got[3] for job, got, _ in results if got and job[0][1] == "_softmax_bwd"
                and dict(zip(kc.kernels_by_name()["_softmax_bwd"].arg_names, (v for _, v in job[1][0])))["NEED_DL"]}
    assert barriers == {1}
