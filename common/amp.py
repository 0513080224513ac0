"""Mixed precision, `--amp bf16|fp16|off`, the same way for all five scripts. None of the papers trains this way: it is
for GPU memory and speed (an fp32 U-GAT-IT at 256 px needs more than many GPUs have; UGATIT-pytorch #10, #21, #45).

The harness runs each `train_step` under `autocast()`: convolutions and matrix products then run in the low-precision
type, and PyTorch keeps its loss functions (mse, l1, binary cross-entropy) in float32. A paper's train_step hands
each loss to `update(name, loss)` (or `backward` then `step`, where several backward passes feed one step), which
runs the backward pass outside autocast, as PyTorch advises (backward ops run in their forward op's type anyway).

- bf16 has float32's exponent range: no gradient underflows, so nothing is scaled.
- fp16 has 5 exponent bits: small gradients would flush to 0, so each loss is multiplied by a scale before its
  backward pass and each gradient divided by it before the step (torch.amp.GradScaler); a step whose gradients
  overflow is skipped and the scale halved. One scaler per optimizer: a GAN's generator and discriminators overflow
  at different times, and a skip of one must not skip the others. The scales are part of the checkpoint.

Evaluations, samples and `--phase test` run in float32 whatever --amp is: a number is measured the same way for
every run.
"""
from contextlib import nullcontext

import torch

from common.distributed import average_gradients

DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, mode, device, optimizers):
        if mode not in DTYPES:
            raise ValueError(f"amp mode {mode!r}: use one of {', '.join(DTYPES)}")
        self.mode, self.device_type, self.optimizers = mode, torch.device(device).type, optimizers
        self.scalers = {name: torch.amp.GradScaler(self.device_type, enabled=mode == "fp16") for name in optimizers}

    def autocast(self):
        return torch.autocast(self.device_type, dtype=DTYPES[self.mode], enabled=self.mode != "off")

    def backward(self, name, loss):
        """loss.backward(), scaled by the scaler of the optimizer `name` that will step on these gradients."""
        with torch.autocast(self.device_type, enabled=False):
            self.scalers[name].scale(loss).backward()

    def step(self, name):
        """The optimizer's step on the gradients averaged over the ranks (common.distributed; skipped by an fp16
        scaler when a gradient is inf or NaN), then its gradients cleared."""
        optimizer, scaler = self.optimizers[name], self.scalers[name]
        average_gradients(optimizer)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def update(self, name, loss):
        self.backward(name, loss)
        self.step(name)

    def state_dict(self):
        return {"mode": self.mode, "scalers": {name: s.state_dict() for name, s in self.scalers.items()}}

    def load_state_dict(self, state):
        """A checkpoint's scales, when both it and this run use fp16; a run that changes --amp starts fresh ones."""
        if state.get("mode") == self.mode == "fp16":
            for name, scaler in self.scalers.items():
                scaler.load_state_dict(state["scalers"][name])


def full_precision(tensor):
    """A context in which no autocast applies to ops on `tensor`'s device: for what must stay float32 (spectral
    norm's power iteration and σ). Devices without autocast (meta) need none."""
    device = tensor.device.type
    return torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext()


def compute_dtype(tensor):
    """The type autocast would run a convolution of `tensor` in: its own outside autocast."""
    device = tensor.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return tensor.dtype


def float32(tensor):
    """An autocast output in float32 where it must not stay bf16/fp16; a float32 or float64 tensor as it is."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
