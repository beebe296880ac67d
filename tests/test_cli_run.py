"""The run commands from the CLI: verify, train, evaluate, recommend, report, compare."""

import pytest

from seqrec.cli import main
from seqrec.data.datasets import prepare_dataset


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ds = prepare_dataset("synthetic", out=root / "ds", log=None,
                         synthetic_kwargs={"n_users": 200, "n_items": 60, "seed": 4, "max_length": 30})
    args = ["--dataset", str(ds.path), "--model", "sasrec", "--no_mhc", "--maxlen", "16", "--hidden_units", "16",
            "--num_epochs", "2", "--progress", "false", "--eval_negatives", "10", "--device", "cpu"]
    return root, args


def test_verify_then_train_then_tools(run_dir, capsys):
    root, args = run_dir
    assert main(["verify", *args, "--train_dir", str(root / "r")]) == 0
    out = capsys.readouterr().out
    assert "checks passed" in out and "memory" in out
    assert main(["train", *args, "--train_dir", str(root / "r")]) == 0
    out = capsys.readouterr().out
    assert "test_full" in out and "report:" in out
    assert (root / "r" / "report.md").exists() and (root / "r" / "loss.png").exists()
    assert main(["recommend", str(root / "r"), "--user", "3", "--k", "4"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith(("1.", "2.", "3.", "4."))]
    assert len(lines) == 4
    assert main(["compare", str(root / "r"), str(root / "r"), "--markdown", str(root / "cmp.md")]) == 0
    assert "full hr@10" in (root / "cmp.md").read_text()
    (root / "r.log").write_text("a training log, as `runs/*` also matches\n")
    capsys.readouterr()
    assert main(["compare", str(root / "r"), str(root / "r.log")]) == 0
    out, err = capsys.readouterr()
    assert "| r |" in out and "skipped 1 path(s) that are not run folders" in err and "r.log" in err
    assert main(["compare", str(root / "r.log")]) == 2
    assert "no seqrec run folder" in capsys.readouterr().err
    assert main(["report", str(root / "r")]) == 0


def test_verify_fails_with_nonzero_exit(run_dir, capsys):
    root, args = run_dir
    assert main(["verify", *args, "--train_dir", str(root / "v"), "--hidden_units", "15", "--num_heads", "2"]) == 1
    assert "✗" in capsys.readouterr().out


def test_recommend_unknown_user_is_clear(run_dir, capsys):
    root, args = run_dir
    if not (root / "r" / "best.pt").exists():
        assert main(["train", *args, "--train_dir", str(root / "r")]) == 0
    assert main(["recommend", str(root / "r"), "--user", "999999"]) == 2
    assert "not in dataset" in capsys.readouterr().err


def test_recommend_timestamps_accept_float_notation():
    from seqrec.cli import _unix_seconds

    assert _unix_seconds("1.7e9") == 1_700_000_000 and _unix_seconds(" 1700000000.5") == 1_700_000_000
    for bad in ("soon", "nan", "inf"):
        with pytest.raises(ValueError, match="not a number of Unix seconds"):
            _unix_seconds(bad)


def test_compare_paired_on_the_same_users(run_dir, capsys, tmp_path):
    import json

    import numpy as np
    import torch

    from seqrec.eval import per_user_metrics
    from seqrec.eval.evaluate import evaluate
    from seqrec.runs.load import load_run

    root, args = run_dir
    for name, seed in (("r", "42"), ("r2", "7")):
        if not (root / name / "best.pt").exists():
            assert main(["train", *args, "--train_dir", str(root / name), "--seed", seed]) == 0
    capsys.readouterr()
    assert main(["compare", str(root / "r"), str(root / "r2"), "--paired", "--metrics", "hr@10,ndcg@5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[1].startswith("| metric | A | B | B - A | paired SE | 95% CI | p |")
    payload = json.loads(out[-1])
    # the means are each run's own full-ranking test metrics, on the same users
    for name, side in (("r", "mean_a"), ("r2", "mean_b")):
        saved = json.loads((root / name / "test_metrics.json").read_text())["test_full"]
        assert payload["metrics"]["hr@10"][side] == pytest.approx(saved["hr@10"])
        assert payload["metrics"]["ndcg@5"][side] == pytest.approx(saved["ndcg@5"])
    hr = payload["metrics"]["hr@10"]
    assert hr["diff"] == pytest.approx(hr["mean_b"] - hr["mean_a"]) and hr["ci_low"] <= hr["diff"] <= hr["ci_high"]
    assert main(["compare", str(root / "r"), str(root / "r"), "--paired", "--csv", str(tmp_path / "p.csv"),
                 "--markdown", str(tmp_path / "p.md")]) == 0
    same = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]["ndcg@10"]
    csv_lines = (tmp_path / "p.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run_a,run_b,split,metric,mean_a,mean_b,diff,se,") and len(csv_lines) == 3
    assert "| ndcg@10 |" in (tmp_path / "p.md").read_text()
    assert same["diff"] == 0 and same["p"] == 1.0
    assert main(["compare", str(root / "r"), "--paired"]) == 2
    assert "exactly two runs" in capsys.readouterr().err
    assert main(["compare", str(root / "r"), str(root / "r2"), "--paired", "--metrics", "auc"]) == 2
    # evaluate(return_ranks=True) gives ranks in the caller's order, whatever order it ranks in
    run = load_run(root / "r", device="cpu")
    sp = run.dataset.eval_split("loo", 0.8)
    perm = np.random.default_rng(0).permutation(len(sp.test_users))
    m, ranks = evaluate(run.model, run.batcher, sp.test_users, sp.test_pos, return_ranks=True, ks=(10,))
    _, shuffled = evaluate(run.model, run.batcher, sp.test_users[perm], sp.test_pos[perm], return_ranks=True, ks=(10,))
    assert torch.equal(shuffled, ranks[torch.from_numpy(perm)])
    assert per_user_metrics(ranks, (10,))["hr@10"].mean().item() == pytest.approx(m["hr@10"])


def test_compare_paired_refuses_runs_on_different_users(run_dir, capsys, tmp_path):
    root, args = run_dir
    if not (root / "r" / "best.pt").exists():
        assert main(["train", *args, "--train_dir", str(root / "r")]) == 0
    other = prepare_dataset("synthetic", out=tmp_path / "ds2", log=None,
                            synthetic_kwargs={"n_users": 150, "n_items": 60, "seed": 5, "max_length": 30})
    swapped = [str(other.path) if a == args[1] else a for a in args]
    assert main(["train", *swapped, "--train_dir", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert main(["compare", str(root / "r"), str(tmp_path / "o"), "--paired"]) == 2
    assert "not evaluated on the same test users" in capsys.readouterr().err


def test_eval_next_time_reaches_training_and_evaluate(run_dir, capsys, tmp_path):
    # An SS4Rec run validated and tested without the held-out item's time (gap 0 at the last
    # position) reports what `seqrec evaluate --next_time last` finds; 'target' differs.
    import json

    root, args = run_dir
    ss4 = [a if a != "sasrec" else "ss4rec" for a in args] + ["--s5_state", "8", "--d_state", "8",
                                                              "--eval_next_time", "last"]
    assert main(["train", *ss4, "--train_dir", str(tmp_path / "s")]) == 0
    saved = json.loads((tmp_path / "s" / "test_metrics.json").read_text())["test_full"]
    capsys.readouterr()
    found = {}
    for mode in ("last", "target"):
        assert main(["evaluate", str(tmp_path / "s"), "--next_time", mode, "--negatives", "0", "--device", "cpu"]) == 0
        payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert payload["next_time"] == mode
        found[mode] = payload["full"]
    assert found["last"]["ndcg@10"] == pytest.approx(saved["ndcg@10"])
    assert found["target"]["ndcg@10"] != pytest.approx(saved["ndcg@10"], abs=1e-9)
