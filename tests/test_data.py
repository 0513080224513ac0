"""Tests of common/data.py: layout discovery, mode conversion, transforms, file checks, resumable sampling (the download
is in test_download.py)."""

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps, features

from common.data import (
    IMG_EXTENSIONS,
    DataError,
    FolderDomain,
    UnpairedSteps,
    canvas,
    load_data,
    to_rgb,
    transform,
)

S = 16  # small images keep the suite fast


def noise_image(w=40, h=30, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def make_dataset(folder, n=3, splits=("trainA", "trainB", "testA", "testB")):
    for split in splits:
        (folder / split).mkdir(parents=True)
        for i in range(n):
            noise_image(seed=i).save(folder / split / f"{split}_{i}.png")
    return folder


def pixel(img, xy=(0, 0)):
    return tuple(to_rgb(img).getpixel(xy))


# --- layout -----------------------------------------------------------------------------------------------------------


def test_layout_found_via_root_and_via_direct_path(tmp_path):
    make_dataset(tmp_path / "data" / "toy", n=3)
    for domains in (load_data("toy", S, root=tmp_path / "data"), load_data(str(tmp_path / "data" / "toy"), S)):
        assert set(domains) == {"trainA", "trainB", "testA", "testB"}
        assert all(len(d) == 3 for d in domains.values())
        assert domains["trainA"].train and not domains["testA"].train
        assert domains["testB"].name(0) == "testB_0"


def test_missing_test_folders_give_none_but_missing_train_is_an_error(tmp_path):
    make_dataset(tmp_path / "toy", splits=("trainA", "trainB"))
    domains = load_data("toy", S, root=tmp_path)
    assert domains["testA"] is None and domains["testB"] is None
    make_dataset(tmp_path / "half", splits=("trainA", "testA", "testB"))
    with pytest.raises(DataError, match="trainB"):
        load_data("half", S, root=tmp_path)


def test_missing_dataset_message_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as err:
        load_data("selfie2anime", S, root=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "selfie2anime") in msg
    assert all(split in msg for split in ("trainA", "trainB", "testA", "testB"))
    assert "https://github.com/taki0112/UGATIT" in msg
    with pytest.raises(DataError, match="https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/horse2zebra.zip"):
        load_data("horse2zebra", S, root=tmp_path)
    with pytest.raises(DataError, match="trainA") as err:
        load_data("my_own_pairs", S, root=tmp_path)
    assert "http" not in str(err.value)


def test_shapes_branch_uses_shapes_domain():
    from common.datasets.shapes import ShapesDomain

    domains = load_data("shapes", S, seed=3)
    assert set(domains) == {"trainA", "trainB", "testA", "testB"}
    assert all(isinstance(d, ShapesDomain) and len(d) > 0 for d in domains.values())


# --- modes -> RGB -----------------------------------------------------------------------------------------------------


def test_grayscale_to_rgb():
    img = to_rgb(Image.new("L", (2, 2), 77))
    assert img.mode == "RGB" and img.getpixel((1, 1)) == (77, 77, 77)


def test_palette_to_rgb():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.putpixel((1, 0), 1)
    assert pixel(img, (0, 0)) == (0, 0, 0) and pixel(img, (1, 0)) == (10, 200, 30)


def test_palette_transparency_becomes_white():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    assert pixel(img, (0, 0)) == (255, 255, 255) and pixel(img, (1, 0)) == (10, 200, 30)


def test_rgba_is_composited_over_white():
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    img.putpixel((1, 0), (10, 20, 30, 255))
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    assert pixel(img, (0, 0)) == (255, 255, 255)
    assert pixel(img, (1, 0)) == (10, 20, 30)
    assert all(abs(c - 127) <= 1 for c in pixel(img, (2, 0)))
    assert pixel(Image.new("LA", (1, 1), (0, 0))) == (255, 255, 255)


def test_cmyk_to_rgb():
    assert pixel(Image.new("CMYK", (1, 1), (0, 255, 255, 0))) == (255, 0, 0)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")  # really read back as a 16-bit image
        rgb = to_rgb(img)
    got = [rgb.getpixel((x, 0))[0] for x in range(4)]
    assert got[0] == 0 and got[1] <= 4 and abs(got[2] - 128) <= 1 and got[3] == 255


@pytest.mark.parametrize(
    "img",
    [
        Image.frombytes("I;16B", (3, 1), np.array([0, 32768, 65535], dtype=">u2").tobytes()),
        Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32)),  # mode 'I', 16-bit data
        Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)),  # mode 'F' in [0, 1]
        Image.fromarray(np.array([[-7.0, 0.0, 7.0]], dtype=np.float32)),  # mode 'F', no known range
    ],
    ids=["I;16B", "I", "F-unit", "F-other"],
)
def test_high_depth_modes_use_their_full_range(img):
    got = [pixel(img, (x, 0))[0] for x in range(3)]
    assert got[0] == 0 and abs(got[1] - 128) <= 1 and got[2] == 255


# --- formats and transforms -------------------------------------------------------------------------------------------

FORMATS = ["png", "jpg", "bmp", "gif", "tiff"] + (["webp"] if features.check("webp") else [])


@pytest.mark.parametrize("ext", FORMATS)
def test_every_common_format_is_read(tmp_path, ext):
    assert f".{ext}" in IMG_EXTENSIONS
    Image.new("RGB", (24, 20), (200, 40, 90)).save(tmp_path / f"solid.{ext}")
    x = FolderDomain(tmp_path, S, train=False)[0]
    expected = torch.tensor([200, 40, 90]).view(3, 1, 1) / 127.5 - 1
    assert x.shape == (3, S, S) and (x - expected).abs().max() < 0.05  # jpg/webp are lossy


def test_image_smaller_than_the_crop(tmp_path):
    img = noise_image(w=10, h=7)
    assert transform(img, S, train=True, generator=torch.Generator().manual_seed(0)).shape == (3, S, S)
    assert transform(img, S, train=False).shape == (3, S, S)


def test_output_is_float32_in_range():
    # An 8-pixel black/white checker survives both resizes with pure black and white pixels.
    checker = Image.fromarray((np.indices((canvas(S), canvas(S))) // 8).sum(0).astype(np.uint8) % 2 * 255)
    for train in (True, False):
        x = transform(checker, S, train, torch.Generator().manual_seed(1))
        assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
        assert x.min() < -0.99 and x.max() > 0.99  # the full range is used, not e.g. [0, 1]


def test_test_transform_is_deterministic():
    torch.manual_seed(0)
    a = transform(noise_image(), S, train=False)
    torch.manual_seed(1)
    assert torch.equal(a, transform(noise_image(), S, train=False))


def test_train_transform_follows_the_generator_only():
    def run(seed):
        return transform(noise_image(), S, train=True, generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(0)
    a = run(5)
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(a, run(5))
    assert not torch.equal(a, run(6))


def test_flip_happens_for_some_seeds_only():
    img = noise_image(w=12, h=9)
    big = (
        transform(img, canvas(S), train=False),  # the train transform's canvas
        torch.flip(transform(img, canvas(S), train=False), dims=[2]),
    )

    def flipped(x):
        """Whether x is a crop of the flipped canvas (True) or of the plain one (False)."""
        for t in range(canvas(S) - S + 1):
            for left in range(canvas(S) - S + 1):
                for is_flipped, resized in zip((False, True), big):
                    if (resized[:, t : t + S, left : left + S] - x).abs().max() < 1e-5:
                        return is_flipped
        raise AssertionError("output is no crop of the resized image")

    seen = {flipped(transform(img, S, True, torch.Generator().manual_seed(s))) for s in range(12)}
    assert seen == {False, True}


# --- folder checks ----------------------------------------------------------------------------------------------------


def test_corrupt_file_is_skipped_with_one_warning_naming_it(tmp_path):
    noise_image().save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.warns(UserWarning, match="broken.png") as record:
        domain = FolderDomain(tmp_path, S, train=True)
    assert len(record) == 1 and len(domain) == 1 and domain.name(0) == "good"


def test_non_image_files_are_ignored_silently(tmp_path):
    noise_image().save(tmp_path / "b.png")
    (tmp_path / "sub").mkdir()
    noise_image().save(tmp_path / "sub" / "a.jpg")
    for junk in ("notes.txt", ".DS_Store", "Thumbs.db", "._b.png"):
        (tmp_path / junk).write_bytes(b"\x00\x05junk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        domain = FolderDomain(tmp_path, S, train=False)
    assert [domain.name(i) for i in range(len(domain))] == ["b", "a"]  # sorted by relative path: b.png < sub/a.jpg


def test_single_file_is_a_domain(tmp_path):
    noise_image().save(tmp_path / "one.png")
    domain = FolderDomain(tmp_path / "one.png", S, train=False)
    assert len(domain) == 1 and domain[0].shape == (3, S, S)


@pytest.mark.parametrize("content", ["empty", "corrupt"])
def test_folder_without_readable_images_is_an_error(tmp_path, content):
    folder = tmp_path / "trainA"
    folder.mkdir()
    if content == "corrupt":
        for i in range(2):
            (folder / f"x{i}.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=str(folder)):
        FolderDomain(folder, S, train=True)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        FolderDomain(tmp_path / "nowhere", S, train=True)


def test_file_that_fails_to_decode_later_names_itself(tmp_path):
    noise_image().save(tmp_path / "ok.png")
    domain = FolderDomain(tmp_path, S, train=False)
    (tmp_path / "ok.png").write_bytes(b"gone bad")
    with pytest.raises(DataError, match="ok.png"), pytest.warns(UserWarning, match="ok.png"):
        domain[0]


def truncated_jpeg(path, seed=0):
    """A JPEG cut in half: PIL's verify() passes it (it checks the structure only), decoding it fails."""
    buffer = io.BytesIO()
    noise_image(seed=seed).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def solid(path, value):
    Image.new("RGB", (20, 20), (value, value, value)).save(path)


def grey_number(image):
    """The number i of a solid image of grey 40 * i."""
    number = (image.mean().item() + 1) * 127.5 / 40
    assert abs(number - round(number)) < 0.03
    return round(number)


def test_file_that_fails_to_decode_when_drawn_is_skipped_deterministically(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i in range(4):
        solid(tmp_path / "a" / f"{i}.png", 40 * i)
    truncated_jpeg(tmp_path / "a" / "2_cut.jpg")  # sorted between 2.png and 3.png: index 3
    solid(tmp_path / "b" / "x.png", 0)
    A = FolderDomain(tmp_path / "a", S, train=True)
    assert len(A) == 5  # the scan lets it through
    steps = UnpairedSteps(A, FolderDomain(tmp_path / "b", S, train=True), seed=0, info=True)
    with pytest.warns(UserWarning, match="2_cut.jpg") as record:
        drawn = [steps[k] for k in range(10)]  # two epochs: the broken file is drawn twice
    assert len(record) == 1  # found once, then known
    numbers = [grey_number(a) for a, _, _ in drawn]
    assert sorted(set(numbers)) == [0, 1, 2, 3] and numbers.count(3) == 4  # the next file, 3.png, stands in for it
    assert A.name(3) == "3"  # so that an output named after index 3 shows what it holds
    # A fresh domain (a resumed run, another DataLoader worker) that meets the file at a later draw draws the same.
    fresh = UnpairedSteps(FolderDomain(tmp_path / "a", S, train=True), steps.B, seed=0, info=True)
    with pytest.warns(UserWarning, match="2_cut.jpg"):
        for k in reversed(range(10)):
            assert torch.equal(fresh[k][0], drawn[k][0]) and fresh[k][2] == drawn[k][2]


def test_paired_names_skip_a_broken_file_on_either_side_together(tmp_path):
    for split in ("trainA", "trainB"):
        (tmp_path / "p" / split).mkdir(parents=True)
        for i in range(4):
            solid(tmp_path / "p" / split / f"{i}.png", 40 * i)
    (tmp_path / "p/trainB/1.png").unlink()
    truncated_jpeg(tmp_path / "p/trainB/1.jpg")  # only B's file of scene 1 is broken
    data = load_data("p", S, root=tmp_path, paired=True)
    steps = UnpairedSteps(data["trainA"], data["trainB"], seed=0, paired=True, info=True)
    with pytest.warns(UserWarning, match="1.jpg"):
        drawn = [steps[k] for k in range(8)]
    for a, b, _ in drawn:
        assert torch.equal(a, b) and grey_number(a) != 1  # one scene, never half of scene 1


@pytest.mark.parametrize("single_file", [False, True])
def test_domain_whose_every_file_fails_to_decode_is_one_clear_error(tmp_path, single_file):
    for i in range(3):
        truncated_jpeg(tmp_path / f"{i}.jpg", seed=i)
    path = tmp_path / "0.jpg" if single_file else tmp_path
    domain = FolderDomain(path, S, train=True)
    with pytest.raises(DataError) as err, pytest.warns(UserWarning):
        UnpairedSteps(domain, domain, seed=0)[0]
    assert "\n" not in str(err.value) and str(path) in str(err.value) and "decode" in str(err.value)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 x 20, left half black: a camera held upright tags it Orientation 6 (rotate 90 degrees clockwise to
    # view), so the upright image is 20 x 40 with its top half black.
    img = Image.fromarray(np.repeat(np.repeat(np.array([[0, 255]], np.uint8), 20, 1), 20, 0)).convert("RGB")
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation
    img.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "photo.jpg") as check:
        assert ImageOps.exif_transpose(check).size == (20, 40)
    x = FolderDomain(tmp_path, S, train=False)[0]
    assert x[:, : S // 2 - 2].mean() < -0.9 and x[:, S // 2 + 2 :].mean() > 0.9


# --- resumable unpaired sampling --------------------------------------------------------------------------------------


class Indices:
    """A fake domain whose samples reveal which index was read and what the augmentation generator gave."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def get(self, i, generator=None):
        return torch.cat([torch.tensor([float(i)]), torch.rand(1, generator=generator)])


def test_same_k_same_pair(tmp_path):
    make_dataset(tmp_path / "toy", n=3, splits=("trainA", "trainB"))
    domains = load_data("toy", S, root=tmp_path)
    steps = UnpairedSteps(domains["trainA"], domains["trainB"], seed=7)
    for k in (0, 4, 11):
        a1, b1 = steps[k]
        torch.manual_seed(k)  # the global RNG must not matter
        a2, b2 = steps[k]
        assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(steps[0][0], UnpairedSteps(domains["trainA"], domains["trainB"], seed=8)[0][0])


def test_every_index_once_per_epoch_in_a_new_order():
    steps = UnpairedSteps(Indices(8), Indices(5), seed=0)

    def order(domain, epoch, n):
        return [int(steps[k][domain][0]) for k in range(epoch * n, (epoch + 1) * n)]

    assert sorted(order(0, 0, 8)) == list(range(8)) and sorted(order(0, 1, 8)) == list(range(8))
    assert sorted(order(1, 0, 5)) == list(range(5)) and sorted(order(1, 3, 5)) == list(range(5))
    assert order(0, 0, 8) != order(0, 1, 8)


def test_resume_gives_the_tail_of_the_uninterrupted_run():
    steps = UnpairedSteps(Indices(7), Indices(4), seed=3)
    batch, total, start = 3, 10, 6

    def batches(first_step, workers):
        loader = torch.utils.data.DataLoader(
            steps, batch_size=batch, sampler=range(first_step * batch, total * batch), num_workers=workers
        )
        return [torch.cat(pair) for pair in loader]

    full = batches(0, workers=0)
    resumed = batches(start, workers=2)
    assert len(resumed) == total - start
    assert all(torch.equal(x, y) for x, y in zip(full[start:], resumed))


# --- paired data and labels -------------------------------------------------------------------------------------------


def side_by_side(folder, n, w=20, h=10):
    """n images whose left half is red with a number in its green, the right half blue with the same number."""
    folder.mkdir(parents=True)
    for i in range(n):
        img = np.zeros((h, 2 * w, 3), np.uint8)
        img[:, :w, 0], img[:, :w, 1] = 255, 10 * i
        img[:, w:, 2], img[:, w:, 1] = 255, 10 * i
        Image.fromarray(img).save(folder / f"{i}.png")


def test_paired_side_by_side_halves_are_a_and_b(tmp_path):
    side_by_side(tmp_path / "facades/train", 3)
    side_by_side(tmp_path / "facades/val", 2)
    data = load_data("facades", S, root=tmp_path, paired=True)
    assert len(data["trainA"]) == 3 and len(data["testB"]) == 2 and not data["testA"].train
    a, b = data["trainA"].get(1), data["trainB"].get(1)
    assert a[0].min() > 0.9 and a[2].max() < -0.9 and b[2].min() > 0.9 and b[0].max() < -0.9
    assert torch.allclose(a[1], b[1])  # the same pair: the same number in green


def test_paired_folders_match_names_and_warn_about_the_rest(tmp_path):
    for split, names in (("trainA", ["x", "y", "only_a"]), ("trainB", ["y", "x", "only_b"])):
        (tmp_path / "p" / split).mkdir(parents=True)
        for name in names:
            noise_image(seed=ord(name[0])).save(tmp_path / "p" / split / f"{name}.{'png' if 'A' in split else 'jpg'}")
    with pytest.warns(UserWarning, match="2 image"):
        data = load_data("p", S, root=tmp_path, paired=True)
    assert [data[s].name(i) for s in ("trainA", "trainB") for i in range(2)] == ["x", "y", "x", "y"]
    (tmp_path / "q/trainA").mkdir(parents=True)
    (tmp_path / "q/trainB").mkdir(parents=True)
    noise_image().save(tmp_path / "q/trainA/a.png")
    noise_image().save(tmp_path / "q/trainB/b.png")
    with pytest.raises(DataError, match="namesake"):
        load_data("q", S, root=tmp_path, paired=True)


def test_embedded_unpaired_data_refuses_a_paired_mode():
    with pytest.raises(DataError, match="shapes is unpaired"):
        load_data("shapes", S, paired=True)


def test_paired_steps_draw_the_same_index_flip_and_crop(tmp_path):
    side_by_side(tmp_path / "p/train", 5)
    data = load_data("p", S, root=tmp_path, paired=True)
    steps = UnpairedSteps(data["trainA"], data["trainB"], seed=1, paired=True, info=True)
    for k in range(8):
        a, b, info = steps[k]
        assert info["label_A"] == info["label_B"] == -1
        assert torch.equal(a[1], b[1])  # same green, the scene's number, same crop
    unpaired = UnpairedSteps(data["trainA"], data["trainB"], seed=1)
    assert any(not torch.equal(a[1], b[1]) for a, b in (unpaired[k] for k in range(8)))


def test_class_sub_folders_are_labels(tmp_path):
    for cls, n in (("cat", 2), ("dog", 1)):
        (tmp_path / "l/trainA" / cls).mkdir(parents=True)
        for i in range(n):
            noise_image(seed=i).save(tmp_path / "l/trainA" / cls / f"{i}.png")
    make_dataset(tmp_path / "l", n=2, splits=("trainB",))
    data = load_data("l", S, root=tmp_path)
    assert [data["trainA"].label(i) for i in range(3)] == [0, 0, 1]
    assert data["trainB"].label(0) is None
    steps = UnpairedSteps(data["trainA"], data["trainB"], seed=0, info=True)
    labels = {steps[k][2]["label_A"] for k in range(6)}
    assert labels == {0, 1} and {steps[k][2]["label_B"] for k in range(6)} == {-1}


def test_the_test_phase_counts_a_file_that_does_not_decode_once(tmp_path, capsys):
    from common.train import translate_all

    class Identity:
        nets = {}

        def translate(self, x, direction):
            return x, None
    for i in range(3):
        solid(tmp_path / f"{i}.png", 40 * i)
    truncated_jpeg(tmp_path / "1_cut.jpg")  # index 2, between 1.png and 2.png
    with pytest.warns(UserWarning, match="1_cut.jpg"):
        translate_all(Identity(), FolderDomain(tmp_path, S, train=False), "A2B", tmp_path / "out", torch.device("cpu"))
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["0.png", "1.png", "2.png"]
    assert "A2B: 3 images" in capsys.readouterr().out
