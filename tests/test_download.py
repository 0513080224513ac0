"""Tests of common/data.py's download_cyclegan, against a local HTTP server (127.0.0.1) serving zips the tests build."""

import functools
import io
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data import DataError, download_cyclegan, load_data

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("trainA", "trainB", "testA", "testB")


class Handler(SimpleHTTPRequestHandler):
    """Serves the folder; under /slow/ it sends headers announcing 1000 bytes, then a byte every `pause` s after the
    first `burst` bytes (the server's `slow` dict), until `stop` is set."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.startswith("/slow/"):
            return super().do_GET()
        slow = self.server.slow
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            self.wfile.write(b"x" * slow["burst"])
            self.wfile.flush()
            while not slow["stop"].wait(slow["pause"]):
                self.wfile.write(b"x")
                self.wfile.flush()
        except OSError:  # the client gave up and closed the connection
            pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(folder served, base URL, the slow path's settings); proxies are unset so urllib goes to it directly."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "ATTNGAN_DOWNLOAD_URL"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    httpd.slow = {"burst": 0, "pause": 0.2, "stop": threading.Event()}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.slow
    httpd.slow["stop"].set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def png_bytes():
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(path, top="toy", per_split=1):
    with zipfile.ZipFile(path, "w") as archive:
        for split in SPLITS:
            for i in range(per_split):
                archive.writestr(f"{top}/{split}/{split}_{i}.png", png_bytes())


def left_in(root):
    """Everything under root, hidden entries included: what a failure must not leave."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def one_line_error(call, *match):
    with pytest.raises(DataError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg and all(m in msg for m in match), msg
    return msg


def test_download_extracts_the_four_folders(tmp_path, server):
    served, url, _ = server
    make_zip(served / "toy.zip")
    root = tmp_path / "dataset"
    assert download_cyclegan("toy", root=root, base_url=url) == root / "toy"
    assert sorted(p.name for p in root.iterdir()) == ["toy"]  # no temporary file or folder left
    assert all(len(d) == 1 for d in load_data("toy", 16, root=root).values())
    (served / "toy.zip").unlink()  # a second call must not download again
    assert download_cyclegan("toy", root=root, base_url=url) == root / "toy"


def test_download_url_from_the_environment_is_the_default_mirror(tmp_path, server, monkeypatch):
    served, url, _ = server
    make_zip(served / "toy.zip")
    monkeypatch.setenv("ATTNGAN_DOWNLOAD_URL", url)
    assert download_cyclegan("toy", root=tmp_path / "dataset") == tmp_path / "dataset" / "toy"


def test_download_404_is_a_data_error_and_leaves_nothing(tmp_path, server):
    _, url, _ = server
    root = tmp_path / "dataset"
    one_line_error(lambda: download_cyclegan("absent", root=root, base_url=url), f"{url}/absent.zip")
    assert left_in(root) == []


def test_download_refuses_paths_outside_the_folder(tmp_path, server):
    served, url, _ = server
    with zipfile.ZipFile(served / "evil.zip", "w") as archive:
        archive.writestr("evil/trainA/a.png", png_bytes())
        archive.writestr("../evil.txt", b"escaped")
    root = tmp_path / "dataset"
    one_line_error(lambda: download_cyclegan("evil", root=root, base_url=url), "unsafe", "evil.zip")
    assert left_in(root) == [] and not (tmp_path / "evil.txt").exists()


def test_embedded_data_set_needs_no_download(tmp_path, server):
    _, url, _ = server
    for name in ("shapes", "shapes_paired", "digits"):
        one_line_error(lambda: download_cyclegan(name, root=tmp_path, base_url=url), name, "embedded")


def test_a_trickling_server_hits_the_overall_deadline(tmp_path, server, monkeypatch):
    _, url, _ = server  # a byte every 0.2 s: never a stall, never done
    monkeypatch.setenv("ATTNGAN_DOWNLOAD_DEADLINE", "1")
    root = tmp_path / "dataset"
    start = time.monotonic()
    one_line_error(lambda: download_cyclegan("toy", root=root, base_url=f"{url}/slow"), "/slow/toy.zip",
                   "ATTNGAN_DOWNLOAD_DEADLINE")
    assert time.monotonic() - start < 5 and left_in(root) == []


def test_a_silent_server_hits_the_stall_timeout(tmp_path, server, monkeypatch):
    _, url, slow = server
    slow.update(burst=10, pause=30)  # 10 bytes, then silence
    monkeypatch.setenv("ATTNGAN_DOWNLOAD_STALL", "0.5")
    root = tmp_path / "dataset"
    start = time.monotonic()
    one_line_error(lambda: download_cyclegan("toy", root=root, base_url=f"{url}/slow"), "/slow/toy.zip",
                   "ATTNGAN_DOWNLOAD_STALL")
    assert time.monotonic() - start < 5 and left_in(root) == []


@pytest.mark.parametrize("name", ["/data/horse2zebra", "sets/horse2zebra"])
def test_a_path_instead_of_a_name_is_refused(tmp_path, name):
    one_line_error(lambda: download_cyclegan(name, root=tmp_path, base_url="http://127.0.0.1:9"), name, "name")
    assert left_in(tmp_path) == []


@pytest.mark.parametrize("value", ["soon", "-1", "0"])
def test_a_bad_timeout_setting_is_named(tmp_path, monkeypatch, value):
    monkeypatch.setenv("ATTNGAN_DOWNLOAD_STALL", value)
    one_line_error(lambda: download_cyclegan("toy", root=tmp_path, base_url="http://127.0.0.1:9"),
                   "ATTNGAN_DOWNLOAD_STALL", value)


def test_an_archive_with_the_wrong_top_folder_leaves_nothing(tmp_path, server):
    served, url, _ = server
    make_zip(served / "toy.zip", top="other")
    root = tmp_path / "dataset"
    one_line_error(lambda: download_cyclegan("toy", root=root, base_url=url), "toy/trainA", "other")
    assert left_in(root) == []


def test_a_file_that_is_no_zip_leaves_nothing(tmp_path, server):
    served, url, _ = server
    (served / "toy.zip").write_bytes(b"<html>a captive portal</html>")
    root = tmp_path / "dataset"
    one_line_error(lambda: download_cyclegan("toy", root=root, base_url=url), f"{url}/toy.zip")
    assert left_in(root) == []


def test_too_little_free_space_is_refused_before_extracting(tmp_path, server, monkeypatch):
    served, url, _ = server
    make_zip(served / "toy.zip")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    root = tmp_path / "dataset"
    one_line_error(lambda: download_cyclegan("toy", root=root, base_url=url), str(root), "free")
    assert left_in(root) == []


KILLED_MID_EXTRACTION = """
import os, sys, zipfile
from common.data import download_cyclegan
extracted = []
real = zipfile.ZipFile._extract_member
def extract_then_die(self, member, *args):
    if len(extracted) == 2:
        os._exit(9)  # as a kill: no except or finally runs
    extracted.append(member)
    return real(self, member, *args)
zipfile.ZipFile._extract_member = extract_then_die
download_cyclegan("toy", root=sys.argv[1], base_url=sys.argv[2])
"""


def test_a_kill_while_extracting_leaves_no_data_set_and_the_next_run_recovers(tmp_path, server):
    served, url, _ = server
    make_zip(served / "toy.zip", per_split=2)
    root = tmp_path / "dataset"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_EXTRACTION, str(root), url], cwd=ROOT)
    assert killed.returncode == 9
    assert not (root / "toy").exists()  # nothing that looks like (part of) a data set
    one_line_error(lambda: load_data("toy", 16, root=root), "not found")
    assert download_cyclegan("toy", root=root, base_url=url) == root / "toy"
    assert sorted(p.name for p in root.iterdir()) == ["toy"]  # the killed run's leftovers are gone
    assert all(len(d) == 2 for d in load_data("toy", 16, root=root).values())


def test_an_incomplete_folder_in_the_way_is_left_alone_and_named(tmp_path, server):
    served, url, _ = server
    make_zip(served / "toy.zip")
    (tmp_path / "toy" / "trainA").mkdir(parents=True)
    (tmp_path / "toy" / "trainA" / "mine.png").write_bytes(png_bytes())
    one_line_error(lambda: download_cyclegan("toy", root=tmp_path, base_url=url), str(tmp_path / "toy"), "testA")
    assert left_in(tmp_path / "toy") == ["trainA", "trainA/mine.png"]


def test_the_scripts_download_from_the_mirror_given_by_flag(tmp_path, server):
    served, url, _ = server
    make_zip(served / "toy.zip", per_split=2)
    p = subprocess.run([sys.executable, str(ROOT / "ugatit.py"), "--dataset", "toy", "--data_root", str(tmp_path / "d"),
                        "--download", "--download_url", url, "--result_dir", str(tmp_path / "runs"), "--img_size", "32",
                        "--ch", "4", "--n_res", "1", "--n_dis", "4", "--light", "--iteration", "1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "d/toy/trainA").is_dir() and (tmp_path / "runs/ugatit/toy/checkpoints/latest.pt").exists()
