"""Download/cache: local HTTP server and file:// URLs only, never the real network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import threading
import urllib.request
import zipfile

import pytest

from seqrec.data import download as dl
from seqrec.data.download import (
    SOURCES,
    ChecksumError,
    DownloadError,
    fetch,
    load,
    locate_items,
    locate_ratings,
    seqrec_home,
)
from seqrec.data.readers import READERS

U_DATA = "1\t10\t5\t881250949\n1\t11\t3\t881250950\n2\t10\t4\t881250951\n"


def make_zip(folder, name="ml-100k", ratings="u.data", text=U_DATA, items="u.item"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/{ratings}", text)
        z.writestr(f"{name}/{items}", "10|Toy Story (1995)|\n")
        z.writestr(f"{name}/README", "synthetic\n")
    return path, hashlib.md5(path.read_bytes()).hexdigest()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve tmp_path/srv on 127.0.0.1 in a thread; yields (base_url, folder, stop)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "srv"
    root.mkdir()
    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    stopped = []

    def stop():
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            stopped.append(True)

    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, stop
    stop()


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_sources_table():
    for name, src in SOURCES.items():
        assert src.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert src.md5 is None or re.fullmatch(r"[0-9a-f]{32}", src.md5)
        assert src.reader in READERS
        assert src.ratings.startswith(f"{name}/") and src.items.startswith(f"{name}/")
    assert SOURCES["ml-1m"].ratings == "ml-1m/ratings.dat"
    assert SOURCES["ml-100k"].ratings == "ml-100k/u.data"
    assert SOURCES["ml-32m"].ratings == "ml-32m/ratings.csv"
    assert {"ml-100k", "ml-1m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small"} <= set(SOURCES)
    with pytest.raises(ValueError, match="unknown data set"):
        fetch("ml-7m", home="/nonexistent")


def test_seqrec_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQREC_HOME", str(tmp_path))
    assert seqrec_home() == tmp_path
    monkeypatch.delenv("SEQREC_HOME")
    assert seqrec_home().parts[-2:] == (".cache", "seqrec")


def test_http_download_then_cache(server, tmp_path, monkeypatch):
    base, root, stop = server
    _, md5 = make_zip(root)
    cache = tmp_path / "cache"
    folder = fetch("ml-100k", url=f"{base}/ml-100k.zip", md5=md5, home=cache, progress=False)
    assert folder == cache / "ml-100k"
    assert locate_ratings("ml-100k", folder) == folder / "u.data"
    assert locate_items("ml-100k", folder) == folder / "u.item"
    assert (folder / dl.MARKER).is_file()
    assert not list(cache.glob(".*"))  # no temporary file or folder left
    stop()

    def refuse(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    again = fetch("ml-100k", url=f"{base}/ml-100k.zip", home=cache, progress=True)
    assert again == folder
    x = load("ml-100k", home=cache)
    assert len(x) == 3 and x.frame.row(0) == (1, 10, 5.0, 881250949)


def test_file_url_with_progress(tmp_path, capsys):
    zpath, md5 = make_zip(tmp_path / "srv", "ml-1m", "ratings.dat", "1::1193::5::978300760\n", "movies.dat")
    folder = fetch("ml-1m", url=zpath.as_uri(), md5=md5, home=tmp_path / "cache", progress=True)
    assert (folder / "ratings.dat").is_file()
    assert len(READERS["ml1m"](locate_ratings("ml-1m", folder))) == 1


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, root, _ = server
    make_zip(root)  # not the official archive: the pinned md5 cannot match
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="expected 0e33842e24a9c977be4e0107933c0723"):
        fetch("ml-100k", url=f"{base}/ml-100k.zip", home=cache, progress=False)
    assert leftovers(cache) == []


def test_md5_from_companion_file(server, tmp_path):
    base, root, _ = server
    zpath, md5 = make_zip(root, "ml-latest-small", "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,4\n", "movies.csv")
    assert SOURCES["ml-latest-small"].md5 is None
    (root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {md5}\n")
    folder = fetch("ml-latest-small", url=f"{base}/ml-latest-small.zip", home=tmp_path / "c1", progress=False)
    assert len(load("ml-latest-small", raw=folder)) == 1
    (root / "ml-latest-small.zip.md5").write_text("0" * 32 + "  ml-latest-small.zip\n")
    with pytest.raises(ChecksumError):
        fetch("ml-latest-small", url=f"{base}/ml-latest-small.zip", home=tmp_path / "c2", progress=False)
    assert leftovers(tmp_path / "c2") == []


def test_no_checksum_available_warns(tmp_path):
    zpath, _ = make_zip(tmp_path / "srv", "ml-latest-small", "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,4\n", "movies.csv")
    with pytest.warns(UserWarning, match="not verified"):
        fetch("ml-latest-small", url=zpath.as_uri(), home=tmp_path / "cache", progress=False)


def test_offline_error_suggests_raw(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    url = "http://127.0.0.1:9/ml-1m.zip"  # discard port: connection refused
    with pytest.raises(DownloadError) as info:
        fetch("ml-1m", url=url, home=tmp_path / "cache", progress=False)
    assert "--raw PATH" in str(info.value) and url in str(info.value)
    assert leftovers(tmp_path / "cache") == []


def test_cli_reports_a_failed_download_in_one_line(tmp_path, monkeypatch, capsys):
    from seqrec.cli import main

    monkeypatch.setenv("SEQREC_HOME", str(tmp_path / "home"))
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    url = "http://127.0.0.1:9/ml-1m.zip"
    assert main(["prepare", "ml-1m", "--url", url, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqrec prepare: error:") and "--raw PATH" in err and "Traceback" not in err


def test_http_404_and_not_a_zip(server, tmp_path):
    base, root, _ = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch("ml-100k", url=f"{base}/missing.zip", md5="0" * 32, home=tmp_path / "c", progress=False)
    (root / "bad.zip").write_bytes(b"not a zip at all")
    md5 = hashlib.md5(b"not a zip at all").hexdigest()
    with pytest.raises(DownloadError, match="not a valid zip"):
        fetch("ml-100k", url=f"{base}/bad.zip", md5=md5, home=tmp_path / "c", progress=False)
    assert leftovers(tmp_path / "c") == []


def test_zip_without_ratings_file(tmp_path):
    zpath, md5 = make_zip(tmp_path / "srv", "ml-100k", "other.txt")
    with pytest.raises(DownloadError, match="has no ml-100k/u.data"):
        fetch("ml-100k", url=zpath.as_uri(), md5=md5, home=tmp_path / "cache", progress=False)
    assert leftovers(tmp_path / "cache") == []


def test_raw_never_uses_network(tmp_path, no_network):
    zpath, md5 = make_zip(tmp_path / "hand")
    # the extracted folder, or a parent of it
    extracted = tmp_path / "ex"
    with zipfile.ZipFile(zpath) as z:
        z.extractall(extracted)
    assert fetch("ml-100k", raw=extracted, home=tmp_path / "cache") == extracted / "ml-100k"
    assert fetch("ml-100k", raw=extracted / "ml-100k") == extracted / "ml-100k"
    # the ratings file itself
    assert fetch("ml-100k", raw=extracted / "ml-100k" / "u.data") == extracted / "ml-100k"
    # the zip downloaded by hand: md5 checked against the pinned one -> mismatch here
    with pytest.raises(ChecksumError):
        fetch("ml-100k", raw=zpath, home=tmp_path / "cache")
    folder = fetch("ml-100k", raw=zpath, md5=md5, home=tmp_path / "cache")
    assert len(load("ml-100k", raw=folder)) == 3
    assert fetch("ml-100k", raw=zpath, md5=md5, home=tmp_path / "cache") == folder  # reused


def test_raw_helpful_errors(tmp_path, no_network):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no u.data found for ml-100k.*ml-100k.zip"):
        fetch("ml-100k", raw=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        fetch("ml-100k", raw=tmp_path / "nope")
    other = tmp_path / "ratings.txt"
    other.write_text("x")
    with pytest.raises(FileNotFoundError, match="expected ml-100k.zip"):
        fetch("ml-100k", raw=other)


def test_raw_real_shared_folder(shared_file, no_network):
    folder = fetch("ml-100k", raw=shared_file("ml-100k"))
    assert locate_items("ml-100k", folder).name == "u.item"
    x = load("ml-100k", raw=folder)
    assert (len(x), x.n_users, x.n_items) == (100_000, 943, 1_682)
    folder = fetch("ml-latest-small", raw=shared_file("ml-latest-small"))
    assert locate_items("ml-latest-small", folder).name == "movies.csv"
