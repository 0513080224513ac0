"""The embedded data sets, generated from a seed, no download. Each module holds its generator and its own
evaluation, and names what the harness reads: `Domain` (the class of its domains), `PAIRED` (A[i] and B[i] one
scene), `report(translate, data, device, cache_dir, directions, ...)` and `MODEL_ATTRIBUTES` (the model's
attributes that report takes as keywords)."""
import importlib

EMBEDDED = ("shapes", "shapes_paired", "digits")


def embedded(name):
    """The module of an embedded data set. Imported when asked: only the data set in use needs its generator's code."""
    return importlib.import_module(f"common.datasets.{name}")
