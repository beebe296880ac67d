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
