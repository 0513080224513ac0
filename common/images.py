"""Images out: tensors in [-1, 1] to PNG, attention maps as heatmaps over their image, and grids of both."""
import torch
import torch.nn.functional as F
from PIL import Image


def to_pil(x):
    """3×H×W in [-1, 1] (or 1×H×W) -> RGB PIL image."""
    x = x.detach().float().cpu().expand(3, -1, -1)
    return Image.fromarray(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())


def heatmap(attention, size):
    """An attention map of any range and resolution (1×h×w) -> 3×size×size jet-coloured in [-1, 1].
    Min-max normalised per map, as the authors' `cam()` does, so the map shows where, not how much."""
    a = attention.detach().float()[None]
    a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)[0]
    a = (a - a.min()) / (a.max() - a.min()).clamp_min(1e-12)
    jet = torch.cat([1.5 - (4 * a - k).abs() for k in (3, 2, 1)]).clamp(0, 1)  # red, green, blue ramps
    return jet * 2 - 1


def overlay(image, attention):
    """The heatmap blended half-and-half over the image it was computed from."""
    return 0.5 * image + 0.5 * heatmap(attention, image.shape[-2:])


def grid(rows, pad=2):
    """rows: lists of 3×H×W tensors (all the same size) -> one PIL image, white gaps between the tiles."""
    h, w = rows[0][0].shape[-2:]
    canvas = Image.new("RGB", (max(map(len, rows)) * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas.paste(to_pil(tile), (pad + c * (w + pad), pad + r * (h + pad)))
    return canvas
