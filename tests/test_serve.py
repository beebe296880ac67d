"""seqrec serve: a real server process on 127.0.0.1 queried over HTTP; the answers equal the
Python API's; every error is JSON with a 4xx and a message; concurrent requests share a pass."""

import concurrent.futures

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import seqrec.api  # noqa: E402
from conftest import free_port  # noqa: E402
from seqrec.cli import main  # noqa: E402
from seqrec.config import resolve_config  # noqa: E402
from seqrec.data.datasets import prepare_dataset  # noqa: E402
from seqrec.train.trainer import train  # noqa: E402



@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    ds = prepare_dataset("synthetic", out=base / "ds", log=None,
                         synthetic_kwargs={"n_users": 80, "n_items": 50, "seed": 2, "max_length": 20})
    cfg = resolve_config({"model": "ss4rec", "dataset": str(ds.path), "train_dir": str(base / "run"), "maxlen": 10,
                          "hidden_units": 16, "s5_state": 8, "d_state": 8, "num_epochs": 1, "eval_negatives": 5,
                          "progress": False, "device": "cpu"})
    train(cfg, log=None)
    return base / "run"


@pytest.fixture(scope="module")
def server(run, serve_process):
    return serve_process(run, "--max_wait_ms", "20")


def test_answers_equal_the_python_api(server, run):
    rec = seqrec.api.load(run)
    user = rec.dataset.user_map()["raw"][3]
    r = httpx.post(f"{server}/recommend", json={"user": user, "k": 5})
    assert r.status_code == 200
    want = rec.recommend(user, k=5)
    assert [x["item"] for x in r.json()["items"]] == [x["item"] for x in want]
    assert [x["score"] for x in r.json()["items"]] == pytest.approx([x["score"] for x in want], abs=1e-5)
    body = {"history": [1, 2, 3], "timestamps": [1.7e9, 1.7e9 + 3600, 1.7e9 + 7200], "k": 4}
    r = httpx.post(f"{server}/recommend", json=body)
    want = rec.recommend(history=[1, 2, 3], timestamps=[1.7e9, 1.7e9 + 3600, 1.7e9 + 7200], k=4)
    assert [x["item"] for x in r.json()["items"]] == [x["item"] for x in want]
    later = httpx.post(f"{server}/recommend", json={**body, "next_time": 1.7e9 + 30 * 86400}).json()["items"]
    # SS4Rec's last S5 step is the gap to the next event: when it happens changes the scores
    assert [x["score"] for x in later] != pytest.approx([x["score"] for x in r.json()["items"]], abs=1e-6)
    assert httpx.post(f"{server}/recommend", json={**body, "next_time": "now"}).status_code == 200
    batch = httpx.post(f"{server}/recommend/batch", json={"requests": [{"user": user, "k": 5}, body]}).json()
    assert [x["item"] for x in batch["results"][0]["items"]] == [x["item"] for x in rec.recommend(user, k=5)]
    info = httpx.get(f"{server}/model").json()
    assert info["model"] == "ss4rec" and info["config"]["model"]["name"] == "ss4rec" and info["test_metrics"]
    assert httpx.get(f"{server}/docs").status_code == 200


@pytest.mark.parametrize("body, status, message", [
    ({"user": "nobody"}, 404, "user 'nobody' is not in dataset"),
    ({"history": [1, 999, 998]}, 400, "items 999, 998 are not in dataset"),
    ({"history": [1, 2], "timestamps": [1.7e9]}, 400, "1 values for 2 history items"),
    ({"user": 1, "k": 0}, 400, "k must be an integer in 1..50"),
    ({"user": 1, "k": 51}, 400, "k must be an integer in 1..50"),
    ({"user": 1, "history": [1]}, 400, "either user"),
    ({"user": 1, "kk": 3}, 422, "malformed request body: kk"),
    ({"history": "1,2"}, 422, "malformed request body: history"),
    ({"history": [1], "next_time": "tomorrow"}, 400, "next_time must be Unix seconds or \"now\""),
])
def test_errors_are_json_with_a_4xx_and_a_message(server, body, status, message):
    r = httpx.post(f"{server}/recommend", json=body)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_malformed_json_and_a_bad_request_in_a_batch(server):
    r = httpx.post(f"{server}/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "malformed" in r.json()["error"]
    r = httpx.post(f"{server}/recommend/batch", json={"requests": [{"user": 1}, {"user": "nobody"}]})
    assert r.status_code == 404 and r.json()["error"].startswith("request 1: user 'nobody'")


def test_concurrent_requests_share_forward_passes(server):
    def ask(i):
        r = httpx.post(f"{server}/recommend", json={"history": [1 + i % 40, 2], "k": 3}, timeout=30)
        return r.status_code, int(r.headers["x-seqrec-batch"])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        out = list(pool.map(ask, range(64)))
    assert all(code == 200 for code, _ in out)
    assert max(size for _, size in out) > 1  # gathered into one forward pass


def test_a_run_that_cannot_be_loaded_stops_at_once(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--port", str(free_port())]) == 2
    assert "not a seqrec run folder" in capsys.readouterr().err
