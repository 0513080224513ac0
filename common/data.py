"""Image data: folders in the U-GAT-IT / CycleGAN layout, paired folders, the embedded data sets, the
preprocessing, and resumable sampling.

A data set is a folder `<root>/<name>/` with four sub-folders `trainA`, `trainB`, `testA`, `testB`, each holding the
images of one domain (A or B) for one phase. Every image format PIL reads is accepted; a photo's EXIF orientation is
applied; whatever its mode, an image is turned into 8-bit RGB before the transform. A file PIL cannot read is skipped
with a warning (see FolderDomain). Images in class sub-folders (`trainB/0/`, `trainB/1/`, ..., as
torchvision's ImageFolder) carry those classes as labels (DA-GAN's regulariser uses them).

Paired data (supervised GuideGAN, pix2pix) is read from either layout: pix2pix's, `<name>/train/` and `<name>/test/`
(or `val/`) of side-by-side images, A on the left half and B on the right (facades, cityscapes, maps as the pix2pix
authors distribute them); or the four folders above, where trainA/x.png pairs with trainB/x.png (same path and name,
any extension).

The transform is the one of the authors' PyTorch code: random horizontal flip, resize to 286/256 of S (286 x 286 at
256 px, as the authors' +30; 143 at 128 px, as GuideGAN's appendix; scaled so that small images lose little), random
S x S crop for training; a plain resize to S x S for testing; then [0, 255] -> [-1, 1].

`UnpairedSteps` draws the (a, b) pairs of a training run as a pure function of (seed, sample index), so that a run
resumed at step n sees exactly the batches the uninterrupted run would have seen.
"""

import os
import shutil
import tempfile
import time
import urllib.request
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch.utils.data import Dataset
from tqdm import tqdm

from common.datasets import EMBEDDED, embedded


class DataError(Exception):
    """A problem with the user's data, with a one-line message saying what to do (the CLI prints it, exits 2)."""


def _openable_extensions() -> frozenset[str]:
    """Lower-case extensions of the formats PIL can decode."""
    Image.init()  # loads every format plugin, so that the registry below is complete

    def decodable(fmt: str) -> bool:
        # Stub formats (HDF5, GRIB, ...) are registered but need an external handler: PIL cannot decode them alone.
        # The registry holds a class, or a plain function for formats with variants (JPEG/MPO).
        factory = Image.OPEN.get(fmt, (None,))[0]
        return factory is not None and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))

    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if decodable(fmt))


IMG_EXTENSIONS = _openable_extensions()

SPLITS = ("trainA", "trainB", "testA", "testB")
UGATIT_URL = "https://github.com/taki0112/UGATIT"
CYCLEGAN_URL = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets"
CYCLEGAN_DATASETS = (
    "horse2zebra", "apple2orange", "summer2winter_yosemite", "monet2photo", "cezanne2photo", "ukiyoe2photo",
    "vangogh2photo", "maps", "cityscapes", "facades", "iphone2dslr_flower",
)

# ---------------------------------------------------------------------------------------------------------------------
# Pixels: any PIL mode -> RGB -> tensor


def _stretch(a: np.ndarray) -> np.ndarray:
    """Maps the array's own [min, max] onto [0, 255], for data with no known range."""
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a, dtype=np.float64)


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit int and float grayscale -> 8-bit 'L', keeping the full range (PIL's convert would clip at 255)."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        a8 = a.astype(np.int64) >> 8
    elif img.mode == "I" and a.min() >= 0 and a.max() <= 65535:
        a8 = a.astype(np.int64) >> 8  # how PIL hands over most 16-bit files (TIFF, PGM) in a 32-bit container
    elif img.mode == "F" and a.min() >= 0 and a.max() <= 1:
        a8 = a * 255.0  # float images are by convention in [0, 1]
    else:
        a8 = _stretch(a.astype(np.float64))
    return Image.fromarray(np.clip(np.rint(a8), 0, 255).astype(np.uint8), mode="L")


def _over_white(img: Image.Image) -> Image.Image:
    """Composites an image with alpha over a white background (transparent pixels become white, not black)."""
    rgba = img.convert("RGBA")  # also turns a palette or colour-key transparency into an alpha channel
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB version of `img`, whatever its mode; an RGB image without transparency is returned as is."""
    if img.mode.startswith("I") or img.mode == "F":
        img = _high_depth_to_l(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in img.info:
        return _over_white(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> float32 3 x H x W in [-1, 1] (torchvision's ToTensor then Normalize(0.5, 0.5))."""
    chw = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(chw)) / 127.5 - 1.0


def canvas(img_size: int) -> int:
    """The side images are resized to before the random crop of img_size: 286 for 256, in proportion elsewhere."""
    return round(img_size * 286 / 256)


def transform(img: Image.Image, img_size: int, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """The authors' preprocessing; every random draw comes from `generator` (the global torch RNG if None)."""
    img = to_rgb(img)
    if not train:
        return _to_tensor(img.resize((img_size, img_size), Image.Resampling.BILINEAR))
    if torch.rand(1, generator=generator).item() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    big = canvas(img_size)  # resizing first lets images smaller than the crop through
    img = img.resize((big, big), Image.Resampling.BILINEAR)
    top, left = torch.randint(0, big - img_size + 1, (2,), generator=generator).tolist()
    return _to_tensor(img.crop((left, top, left + img_size, top + img_size)))


# ---------------------------------------------------------------------------------------------------------------------
# One domain's images in a folder


def _candidates(path: Path) -> list[Path]:
    """The image files under `path`, in an order that is the same on every machine."""
    if path.is_file():
        return [path]

    def wanted(p: Path) -> bool:
        # Hidden entries are OS litter (.DS_Store, macOS '._x.jpg' twins, .ipynb_checkpoints), not data.
        rel = p.relative_to(path)
        return p.suffix.lower() in IMG_EXTENSIONS and not any(part.startswith(".") for part in rel.parts)

    files = (p for p in path.rglob("*") if p.is_file() and wanted(p))
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def _readable(path: Path) -> bool:
    # Any exception means PIL cannot read the file; which one depends on the format plugin.
    try:
        with Image.open(path) as im:
            # Checks the structure (and PNG checksums) without decoding the pixels: fast on large sets, but a
            # truncated JPEG passes; FolderDomain skips such files when they are drawn.
            im.verify()
        return True
    except Exception:
        return False


def _find_images(path: Path) -> list[Path]:
    """The readable images under `path`; warns once about unreadable ones, raises DataError if none is left."""
    if not path.exists():
        raise DataError(f"{path} does not exist: give a folder of images or an image file")
    candidates = _candidates(path)
    if not candidates:
        raise DataError(f"no image files in {path}: put the domain's images (.jpg, .png, ...) in this folder")
    readable = {p: _readable(p) for p in candidates}
    good = [p for p in candidates if readable[p]]
    bad = [p for p in candidates if not readable[p]]
    if not good:
        raise DataError(
            f"no readable image in {path}: PIL could not open any of its {len(bad)} image file(s) "
            f"(e.g. {bad[0].name}); put valid .jpg/.png images in this folder"
        )
    if bad:
        shown = ", ".join(p.relative_to(path).as_posix() for p in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        warnings.warn(f"skipping {len(bad)} unreadable image file(s) in {path}: {shown}{more}", stacklevel=3)
    return good


class FolderDomain(Dataset):
    """The images of one domain: a folder (searched recursively) or a single image file.

    A file that passes the scan but fails to decode when drawn (a truncated JPEG) is skipped with a warning, and the
    next file that decodes (index i + 1, i + 2, ..., cyclically) stands in for it in `get`, `name` and `label`.
    Whether a file decodes depends on the file alone, so a batch stays a pure function of (seed, step): a resumed
    run, or another DataLoader worker, finds the same stand-in. Decoding every file at the scan instead would add
    minutes to every start and resume of a 100k-image folder, for files that are rarely broken.
    """

    def __init__(self, path: str | Path, img_size: int, train: bool):
        self.path = Path(path)
        self.img_size = img_size
        self.train = train
        self.files = _find_images(self.path)
        self._broken: set[int] = set()  # indices found not to decode (by this process)

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, i: int) -> Image.Image:
        with Image.open(self.files[i]) as im:
            im.load()  # decode while the file is open
            ImageOps.exif_transpose(im, in_place=True)  # a camera's Orientation tag: the photo as it was taken
            return to_rgb(im)

    def _from(self, i: int):
        """Indices i, i + 1, ... (cyclically, each once), without those known not to decode."""
        return (j for j in ((i + d) % len(self.files) for d in range(len(self.files))) if j not in self._broken)

    def _open(self, i: int) -> Image.Image:
        """Image i, or that of its stand-in (see the class)."""
        for j in self._from(i):
            try:
                return self._decode(j)
            except Exception as e:  # which exception depends on the format plugin
                self._broken.add(j)
                warnings.warn(f"cannot decode {self.files[j]} ({e}): skipped, the next image stands in for it "
                              f"({len(self._broken)} such file(s) in {self.path} so far); replace or remove it",
                              stacklevel=3)
        raise DataError(f"no image in {self.path} can be decoded (all {len(self.files)} file(s) failed, e.g. "
                        f"{self.files[i].name}): put valid .jpg/.png images there")

    def stand_in(self, i: int) -> int:
        """The index whose image `get(i)` returns: i itself unless get found its file broken (see the class)."""
        return next(self._from(i), i)

    def get(self, i: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return transform(self._open(i), self.img_size, self.train, generator)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.get(i)

    def name(self, i: int) -> str:
        return self.files[self.stand_in(i)].stem

    def label(self, i: int) -> int | None:
        """The class of image i: the index of its first-level sub-folder among the sorted sub-folder names, or None
        where the images are not all in sub-folders."""
        if not hasattr(self, "_classes"):
            parents = [p.relative_to(self.path).parts[:-1] for p in self.files] if self.path.is_dir() else [()]
            self._classes = sorted({p[0] for p in parents}) if all(parents) else None
        if self._classes is None:
            return None
        return self._classes.index(self.files[self.stand_in(i)].relative_to(self.path).parts[0])


class HalfDomain(FolderDomain):
    """One half of side-by-side paired images (pix2pix's layout): A is the left half, B the right."""

    def __init__(self, path: str | Path, img_size: int, train: bool, side: str):
        super().__init__(path, img_size, train)
        self.side = side

    def _open(self, i: int) -> Image.Image:
        img = super()._open(i)
        half = img.width // 2
        return img.crop((0, 0, half, img.height) if self.side == "A" else (half, 0, 2 * half, img.height))

    def label(self, i: int) -> None:
        return None


def _keep(domain: FolderDomain, stems: list[str]) -> FolderDomain:
    """`domain` restricted to the files whose path without extension is in `stems`, in that order."""
    by_stem = {p.relative_to(domain.path).with_suffix("").as_posix(): p for p in domain.files}
    domain.files = [by_stem[s] for s in stems]
    return domain


def _match_names(A: FolderDomain, B: FolderDomain) -> tuple[FolderDomain, FolderDomain]:
    """Pairs trainA/x.* with trainB/x.*: both domains keep only the common names, in one order."""
    stems = [{p.relative_to(d.path).with_suffix("").as_posix() for p in d.files} for d in (A, B)]
    common = sorted(stems[0] & stems[1])
    if not common:
        raise DataError(f"no file name in {A.path} has a namesake in {B.path}: paired data needs trainA/x.png to pair "
                        f"with trainB/x.png (or side-by-side A|B images in train/ and test/)")
    unmatched = len(stems[0] | stems[1]) - len(common)
    if unmatched:
        warnings.warn(f"{unmatched} image(s) in {A.path} or {B.path} have no namesake in the other folder: skipped",
                      stacklevel=3)
    return _keep(A, common), _keep(B, common)


# ---------------------------------------------------------------------------------------------------------------------
# Data sets: the four domains


def _where_to_get(dataset: str, root: Path) -> str:
    name = Path(dataset).name
    if name == "selfie2anime":
        return (
            f"get it from the 'selfie2anime' dataset link in the U-GAT-IT authors' README ({UGATIT_URL}) "
            f"and unzip it into {root / name}"
        )
    if name in CYCLEGAN_DATASETS:
        return f"download {CYCLEGAN_URL}/{name}.zip and unzip it into {root} (or pass --download)"
    return (
        "put domain A's images in trainA/testA and domain B's in trainB/testB "
        "(or use the built-in data set 'shapes')"
    )


def _dataset_folder(dataset: str, root: Path) -> Path:
    """The folder of `dataset`: <root>/<dataset>, else `dataset` itself as a path; checks trainA and trainB."""
    expected = f"expected sub-folders {', '.join(SPLITS)}"
    looked = list(dict.fromkeys([root / dataset, Path(dataset)]))
    folder = next((p for p in looked if p.is_dir()), None)
    if folder is None:
        where = " or ".join(str(p) for p in looked)
        raise DataError(f"data set {dataset!r} not found in {where} ({expected}); {_where_to_get(dataset, root)}")
    missing = [s for s in ("trainA", "trainB") if not (folder / s).is_dir()]
    if missing:
        raise DataError(f"{folder} has no {' and no '.join(missing)} ({expected}); {_where_to_get(dataset, root)}")
    return folder


def load_data(dataset: str, img_size: int, root: str | Path = "dataset", seed: int = 0,
              paired: bool = False) -> dict[str, Dataset]:
    """{'trainA', 'trainB', 'testA', 'testB'} -> domain; a missing test folder gives None (only testing needs it).
    With `paired`, trainA[i] and trainB[i] (and testA[i], testB[i]) show the same scene."""
    if dataset in EMBEDDED:
        module = embedded(dataset)
        if paired and not module.PAIRED:
            raise DataError(f"{dataset} is unpaired: this mode needs paired data (shapes_paired, or a folder of "
                            f"side-by-side A|B images in train/ and test/, or trainA/trainB with matching names)")
        return {f"{split}{d}": module.Domain(d, split, img_size, seed=seed)
                for split in ("train", "test") for d in "AB"}
    if paired:
        return _load_paired(dataset, img_size, Path(root))
    return _load_folders(_dataset_folder(dataset, Path(root)), img_size)


def _load_paired(dataset: str, img_size: int, root: Path) -> dict[str, Dataset]:
    side_by_side = next((p for p in (root / dataset, Path(dataset)) if (p / "train").is_dir()), None)
    if side_by_side is not None:
        test = next((side_by_side / s for s in ("test", "val") if (side_by_side / s).is_dir()), None)
        return {f"{split}{d}": HalfDomain(folder, img_size, split == "train", d) if folder else None
                for split, folder in (("train", side_by_side / "train"), ("test", test)) for d in "AB"}
    data = _load_folders(_dataset_folder(dataset, root), img_size)
    for split in ("train", "test"):
        if data[f"{split}A"] is not None and data[f"{split}B"] is not None:
            data[f"{split}A"], data[f"{split}B"] = _match_names(data[f"{split}A"], data[f"{split}B"])
    return data


def _load_folders(folder: Path, img_size: int) -> dict[str, Dataset]:
    return {
        s: FolderDomain(folder / s, img_size, train=s.startswith("train")) if (folder / s).is_dir() else None
        for s in SPLITS
    }


def download_cyclegan(name: str, root: str | Path = "dataset", base_url: str | None = None) -> Path:
    """Downloads and unzips <base_url>/<name>.zip into <root>/<name>/ unless it is there already; returns that.

    base_url None means $ATTNGAN_DOWNLOAD_URL where set (a mirror), else the CycleGAN authors' server (CYCLEGAN_URL).
    The download gives up when no byte has come for $ATTNGAN_DOWNLOAD_STALL seconds (default 60) or when it has
    taken $ATTNGAN_DOWNLOAD_DEADLINE seconds in all (default 7200, checked as bytes come). The archive is fetched and
    unpacked in a hidden work folder in root and the data set renamed into place only once it holds the four
    folders, so an error, Ctrl-C or a kill leaves no <root>/<name>/; the next call removes a killed call's work
    folder. Every failure is a one-line DataError.
    """
    if name in EMBEDDED:
        raise DataError(f"{name} is an embedded data set, generated when used: it needs no download (drop --download)")
    if Path(name).name != name:  # also keeps the work folder's name (below) inside root
        raise DataError(f"downloads take a CycleGAN data set's name (horse2zebra, apple2orange, ...), not {name!r}")
    root = Path(root)
    target = root / name
    missing = [s for s in SPLITS if not (target / s).is_dir()]
    if not missing:
        return target
    if target.exists():  # the user's, or an interrupted unzip of old: never merged into, never removed
        raise DataError(f"{target} exists but has no {', '.join(missing)}: move it away or delete it, then download")
    url = f"{(base_url or os.environ.get('ATTNGAN_DOWNLOAD_URL') or CYCLEGAN_URL).rstrip('/')}/{name}.zip"
    deadline, stall = download_limits()
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(f".{name}.download-*"):  # a killed call's (no except or finally ran)
        shutil.rmtree(leftover, ignore_errors=True)
    # In root, not /tmp: the same disk as the data, so the final rename is atomic and /tmp's size does not matter.
    work = Path(tempfile.mkdtemp(prefix=f".{name}.download-", dir=root))
    try:
        fetch(url, work / f"{name}.zip.part", deadline, stall, MIRROR)
        _unpack(work / f"{name}.zip.part", work / "files", url, root)
        _check_layout(work / "files", name, url)
        (work / "files" / name).rename(target)
    except DataError:
        raise
    except Exception as e:  # network, HTTP, disk or archive errors
        raise DataError(f"could not get {url}: {e}; check the name and the network, or use a mirror "
                        f"(--download_url or ATTNGAN_DOWNLOAD_URL)") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def download_limits() -> tuple[float, float]:
    """The seconds a download may take in all, and without a byte, from the environment (see download_cyclegan)."""
    return _seconds("ATTNGAN_DOWNLOAD_DEADLINE", 7200), _seconds("ATTNGAN_DOWNLOAD_STALL", 60)


def _seconds(variable: str, default: float) -> float:
    """A positive number of seconds from the environment variable, else the default."""
    text = os.environ.get(variable)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise DataError(f"{variable}={text!r}: give a positive number of seconds (the default is {default:g})")
    return value


MIRROR = "use a mirror (--download_url or ATTNGAN_DOWNLOAD_URL)"


def fetch(url: str, path: Path, deadline: float, stall: float, elsewhere: str) -> None:
    """Writes url's body to path, with a progress bar; `elsewhere` ends the errors, saying where else to get it."""
    give_up = time.monotonic() + deadline
    try:
        # urlopen's timeout bounds each read, not the whole: a server trickling a byte a minute never reaches it.
        with urllib.request.urlopen(url, timeout=stall) as response, open(path, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=PurePosixPath(url).name) as bar:
                while chunk := response.read1(1 << 20):  # what one read brings, so the deadline is checked often
                    out.write(chunk)
                    bar.update(len(chunk))
                    if time.monotonic() > give_up:
                        raise DataError(f"{url} took over {deadline:g} s (ATTNGAN_DOWNLOAD_DEADLINE): try again, "
                                        f"raise that limit, or {elsewhere}")
                got = bar.n
    except TimeoutError as e:
        raise DataError(f"{url} sent nothing for {stall:g} s (ATTNGAN_DOWNLOAD_STALL): try again later, or "
                        f"{elsewhere}") from e
    if size is not None and got != size:
        raise DataError(f"{url}: the connection closed after {got} of {size} bytes; try again")


def _unpack(archive_path: Path, folder: Path, url: str, root: Path) -> None:
    """Extracts the archive into folder once its paths are safe and the disk has room for what it declares."""
    with zipfile.ZipFile(archive_path) as archive:
        _check_members(archive, url)
        # zipfile writes no more than each member's declared size, so this also stops a zip bomb.
        need = sum(info.file_size for info in archive.infolist())
        free = shutil.disk_usage(root).free
        if need > free:
            raise DataError(f"{url} unpacks to {tqdm.format_sizeof(need, 'B')} but {root} has "
                            f"{tqdm.format_sizeof(free, 'B')} free: make room there or choose another --data_root")
        archive.extractall(folder)


def _check_members(archive: zipfile.ZipFile, url: str) -> None:
    """Refuses archives whose members would land outside the target folder (absolute paths, '..', drives)."""
    for member in archive.namelist():
        parts = PurePosixPath(member.replace("\\", "/")).parts
        if member.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DataError(f"unsafe path {member!r} in {url}: refusing to unpack it")


def _check_layout(folder: Path, name: str, url: str) -> None:
    missing = [s for s in SPLITS if not (folder / name / s).is_dir()]
    if missing:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise DataError(f"{url} has no {name}/{missing[0]} folder (its top level: {found}): check the URL or mirror")


# ---------------------------------------------------------------------------------------------------------------------
# Resumable unpaired sampling


def _generator(seed: int, stream: int, n: int) -> torch.Generator:
    """A generator for (seed, stream, n), independent of the others; SeedSequence, unlike hash(), is stable."""
    state = np.random.SeedSequence((seed, stream, n)).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


class UnpairedSteps(Dataset):
    """Sample k (= step * batch_size + j) -> (a, b), a pure function of (seed, k).

    Each domain is walked in a fresh random order every epoch of its own length, so A and B are paired differently
    every time, and nothing depends on what was drawn before k: resuming or changing the number of workers changes
    no batch. With `paired`, b is the image of a's index with a's flip and crop (trainA[i] and trainB[i] are one
    scene). With `info`, a sample is (a, b, info): the two images' labels (-1 for none), for models that learn
    from labels (DA-GAN).
    """

    def __init__(self, A, B, seed: int = 0, paired: bool = False, info: bool = False):
        self.A = A
        self.B = B
        self.seed = seed
        self.paired = paired
        self.info = info

    def __len__(self) -> int:
        return 2**62  # unbounded in practice: the sampler's range picks the steps

    def _index(self, domain, stream: int, k: int) -> int:
        # The permutation is recomputed per sample rather than cached: it costs far less than decoding an image.
        epoch, j = divmod(k, len(domain))
        return int(torch.randperm(len(domain), generator=_generator(self.seed, stream, epoch))[j])

    def _pair(self, i: int, k: int):
        """(index, a, b) of one scene: i, or where A's or B's file does not decode, the next index where both do.
        A fresh generator in one state for each, so b gets a's flip and crop."""
        for _ in range(len(self.A)):  # each round that finds no pair moves past at least one index
            a = self.A.get(i, generator=_generator(self.seed, 2, k))
            i = _stand_in(self.A, i)
            b = self.B.get(i, generator=_generator(self.seed, 2, k))
            if _stand_in(self.B, i) == i:
                return i, a, b
            i = _stand_in(self.B, i)
        raise DataError(f"no pair of {self.A.path} and {self.B.path} can be decoded: put valid images there")

    def __getitem__(self, k: int):
        k = int(k)
        if not 0 <= k < len(self):
            raise IndexError(k)
        if self.paired:
            i, a, b = self._pair(self._index(self.A, 0, k), k)
            j = i
        else:
            i, j = self._index(self.A, 0, k), self._index(self.B, 1, k)
            augment = _generator(self.seed, 2, k)  # a file that fails to decode draws nothing from it
            a, b = self.A.get(i, generator=augment), self.B.get(j, generator=augment)
            i, j = _stand_in(self.A, i), _stand_in(self.B, j)
        if not self.info:
            return a, b
        return a, b, {"label_A": _label(self.A, i), "label_B": _label(self.B, j)}


def _stand_in(domain, i: int) -> int:
    """The index of the image `domain.get(i)` returned (FolderDomain skips files that fail to decode)."""
    return domain.stand_in(i) if hasattr(domain, "stand_in") else i


def _label(domain, i: int) -> int:
    label = domain.label(i) if hasattr(domain, "label") else None
    return -1 if label is None else label
