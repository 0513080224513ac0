"""The embedded data sets, generated from a seed, no download: each module holds its generator (its domains' class)
and its own evaluation, `report(translate, data, device, cache_dir, directions, **MODEL_ATTRIBUTES)`."""
import importlib

EMBEDDED = ("shapes", "shapes_paired", "digits")


def embedded(name):
    """The module of an embedded data set. Imported when asked: only the data set in use needs its generator's code."""
    return importlib.import_module(f"common.datasets.{name}")
