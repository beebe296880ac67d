"""seqrec tune: spaces checked before any trial, trials as run folders with validation-only
selection, the pruner hook, resume after a kill, two workers on one storage, refit, phases."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from seqrec.cli import main  # noqa: E402
from seqrec.config import load_config, resolve_config  # noqa: E402
from seqrec.data.datasets import prepare_dataset  # noqa: E402
from seqrec.train.trainer import train  # noqa: E402
from seqrec.tune.space import load_space  # noqa: E402
from seqrec.tune.study import SPACE_DIR  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return prepare_dataset("synthetic", out=tmp_path_factory.mktemp("tune") / "ds", log=None,
                           synthetic_kwargs={"n_users": 150, "n_items": 40, "seed": 1, "max_length": 20})


def _base(ds, *extra):
    return ["--model", "sasrec", "--dataset", str(ds.path), "--maxlen", "10", "--hidden_units", "16",
            "--num_epochs", "3", "--eval_negatives", "5", "--num_threads", "1", "--progress", "false",
            "--device", "cpu", "--patience", "0", *extra]


def _space(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


LR = "lr: {type: float, low: 1.0e-3, high: 2.0e-2, log: true}\n"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _trials(study_dir, name="seqrec"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}").get_trials()


# -- spaces ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("lr: {type: float, low: 1.0e-3, high: 1.0e-2}\nhiden_units: {type: int, low: 16, high: 64}\n",
     "line 2: 'hiden_units' is not a setting of sasrec \\(did you mean 'hidden_units'\\?\\)"),
    ("lr: {type: float, low: 1.0e-2, high: 1.0e-3}\n", "line 1: lr: the range \\[0.01, 0.001\\] is inverted"),
    ("dropout_rate: {type: float, low: 0.2, high: 0.2}\n", "line 1: dropout_rate: the range .* is empty"),
    ("num_heads: {type: categorical, choices: [one, two]}\n", "line 1: num_heads must be an integer.*wrong type"),
    ("\nmetric: auc@10\nlr: {type: float, low: 1.0e-3, high: 1.0e-2}\n", "line 2: metric must look like ndcg@10"),
    ("hidden_units: {type: int, low: 16, high: 48, step: 8}\nnum_heads: {type: categorical, choices: [1, 2, 16]}\n",
     "line 1: the space can sample a broken configuration \\(hidden_units=24, num_heads=16\\).*divisible by num_heads"),
    ("lr: {type: float, low: 0.0, high: 1.0e-2, log: true}\n", "a log range needs low > 0"),
    ("s5_state: {type: int, low: 8, high: 16}\n", "'s5_state' is not a setting of sasrec"),
    ("dataset: {type: categorical, choices: [a, b]}\n", "'dataset' is fixed for a study"),
    ("dropout_rate: {type: float, low: 0.0, high: 1.5}\n", "--dropout_rate must be in \\[0, 1\\)"),
])
def test_bad_spaces_stop_before_any_trial_naming_the_line(text, message, ds, tmp_path, capsys):
    path = _space(tmp_path, text)
    with pytest.raises(ValueError, match=message):
        load_space(path, resolve_config({"model": "sasrec"}))
    assert main(["tune", *_base(ds), "--space", str(path), "--trials", "2", "--study_dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s" / "trials").exists()  # nothing ran


def test_the_seeds_guide_ships_as_valid_spaces():
    for name, model in (("capacity", "sasrec"), ("lr", "sasrec"), ("regularisation", "ss4rec"), ("mhc", "tisasrec"),
                        ("time", "tisasrec")):
        space = load_space(SPACE_DIR / f"{name}.yaml", resolve_config({"model": model}))
        assert space.params
    cap = {p.name: p for p in load_space(SPACE_DIR / "capacity.yaml", resolve_config({"model": "sasrec"})).params}
    assert (cap["hidden_units"].low, cap["hidden_units"].high, cap["num_blocks"].high) == (48, 512, 6)
    with pytest.raises(ValueError, match="'mhc_expansion_rate' is not a setting of ss4rec"):
        load_space(SPACE_DIR / "mhc.yaml", resolve_config({"model": "ss4rec"}))


# -- the trainer's hooks ------------------------------------------------------------------------

def test_on_eval_can_stop_a_run_and_test_false_never_tests(ds, tmp_path):
    seen = []
    cfg = resolve_config({"model": "sasrec", "dataset": str(ds.path), "train_dir": str(tmp_path / "p"), "maxlen": 10,
                          "hidden_units": 16, "num_epochs": 5, "eval_negatives": 5, "progress": False, "device": "cpu"})
    res = train(cfg, log=None, on_eval=lambda e, v: seen.append((e, v)) or e == 2)
    assert res["pruned"] and res["epochs_run"] == 2 and [e for e, _ in seen] == [1, 2]
    assert not (tmp_path / "p" / "test_metrics.json").exists()
    res = train(cfg.replace(train={"train_dir": str(tmp_path / "q"), "num_epochs": 2}), log=None, test=False)
    assert "test_full" not in res and "test_sampled" not in res and "valid_full" in res


def test_loo_refit_trains_on_the_validation_item(ds):
    loo, refit = ds.eval_split("loo"), ds.eval_split("loo_refit")
    users = loo.test_users
    assert (refit.train_end[users - 1] == loo.test_pos).all() and (loo.train_end[users - 1] == loo.valid_pos).all()
    assert len(refit.valid_users) == 0 and (refit.test_pos == loo.test_pos).all()


# -- studies -----------------------------------------------------------------------------------

def test_a_study_end_to_end(ds, tmp_path, capsys):
    study = tmp_path / "study"
    space = _space(tmp_path, LR + "dropout_rate: {type: float, low: 0.0, high: 0.5}\n")
    assert main(["tune", *_base(ds), "--space", str(space), "--trials", "4", "--study_dir", str(study),
                 "--refit"]) == 0
    trials = _trials(study)
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    for t in trials:  # a real run folder, whose test split was never read
        run = Path(t.user_attrs["train_dir"])
        assert (run / "config.yaml").exists() and (run / "best.pt").exists()
        if t.state.name == "COMPLETE":
            assert "test_full" not in json.loads((run / "test_metrics.json").read_text())
    summary = json.loads((study / "summary.json").read_text())
    best = max((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert summary["best_trial"] == best.number and summary["best_valid"] == pytest.approx(best.value)
    assert summary["test"]["full"]["n_users"] == 150  # tested once, on test
    refit = summary["refit"]
    assert refit["epochs"] == best.user_attrs["best_epoch"] and "refit" in refit["protocol"]
    assert load_config(study / "refit" / "config.yaml").data.split == "loo_refit"
    refit_report = (study / "refit" / "report.md").read_text()  # says it had no validation to select on
    assert "no validation split" in refit_report and "best validation epoch" not in refit_report
    text = (study / "study.md").read_text()
    assert "| # | state | lr | dropout_rate |" in text and "refit (" in text and "history.png" in text
    assert (study / "history.png").stat().st_size > 1000
    best_cfg = load_config(study / "best.yaml")
    assert best_cfg.train.lr == pytest.approx(best.params["lr"]) and best_cfg.train.train_dir == str(study / "best")
    assert main(["train", "--config", str(study / "best.yaml"), "--num_epochs", "1"]) == 0  # runs as it is
    capsys.readouterr()
    assert main(["compare", *map(str, sorted((study / "trials").iterdir()))]) == 0
    assert "valid ndcg@10" in capsys.readouterr().out


def test_running_the_same_command_again_continues_the_study(ds, tmp_path):
    study, space = tmp_path / "s", _space(tmp_path, LR)
    argv = ["tune", *_base(ds), "--space", str(space), "--study_dir", str(study)]
    assert main([*argv, "--trials", "2"]) == 0
    first = [(t.number, t.value) for t in _trials(study)]
    assert main([*argv, "--trials", "3"]) == 0
    again = [(t.number, t.value) for t in _trials(study)]
    assert again[:2] == first and len(again) == 3  # kept, and one more
    # the continuing process draws new start-up trials, not the first process's again (same --tune_seed)
    lrs = [t.params["lr"] for t in _trials(study)]
    assert len(set(lrs)) == 3, lrs
    assert main([*argv[:-2], "--study_dir", str(study), "--trials", "3", "--num_epochs", "2"]) == 2  # changed base

    # a study begun before a setting existed (its stored start lacks it) continues while that setting
    # keeps its default; a stored setting with another value still refuses
    import optuna

    st = optuna.load_study(study_name="seqrec", storage=f"sqlite:///{study / 'study.db'}")
    base = st.user_attrs["base"]
    older = {**base, "train": {k: v for k, v in base["train"].items() if k != "compile"}}
    st.set_user_attr("base", older)
    assert main([*argv, "--trials", "4"]) == 0 and len(_trials(study)) == 4
    st.set_user_attr("base", {**base, "train": {**base["train"], "lr": 0.5}})
    assert main([*argv, "--trials", "5"]) == 2


@pytest.mark.slow
def test_a_killed_study_continues_and_reruns_the_interrupted_trial(ds, tmp_path):
    study, space = tmp_path / "k", _space(tmp_path, LR)
    argv = [sys.executable, "-m", "seqrec", "tune", *_base(ds, "--num_epochs", "40"), "--space", str(space),
            "--study_dir", str(study), "--trials", "2", "--pruner", "none"]
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (study / "trials" / "seqrec-0001" / "last.pt").exists():  # the second trial is training
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    states = [t.state.name for t in _trials(study)]
    assert states == ["COMPLETE", "RUNNING"]  # what the kill leaves in the database
    again = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    trials = _trials(study)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["retry_of"] == 1


@pytest.mark.slow
def test_two_workers_share_one_storage(ds, tmp_path):
    study, space = tmp_path / "w", _space(tmp_path, LR + "dropout_rate: {type: float, low: 0.0, high: 0.5}\n")
    journal = tmp_path / "journal.log"
    res = subprocess.run([sys.executable, "-m", "seqrec", "tune", *_base(ds), "--space", str(space), "--study_dir",
                          str(study), "--trials", "6", "--n_jobs", "2", "--storage", f"journal:{journal}"],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="seqrec", storage=storage).get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 6 <= len(finished) <= 7  # a worker may start one more before it sees the count
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2  # both worked on the one study
    assert (study / "study.md").exists() and (study / "best_test.json").exists()


@pytest.mark.slow
def test_workers_timeout_is_the_whole_budget(ds, tmp_path):
    """With --n_jobs the workers stop at --timeout and the parent only reports: it starts no trial of
    its own afterwards (which would have spent the budget a second time)."""
    study = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-m", "seqrec", "tune", *_base(ds), "--space", str(_space(tmp_path, LR)),
                             "--study_dir", str(study), "--trials", "50", "--n_jobs", "2", "--timeout", "0.5"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    trials = _trials(study)
    assert 1 <= len(trials) < 50 and all(t.state.name == "COMPLETE" for t in trials)
    assert proc.pid not in {t.user_attrs["worker_pid"] for t in trials}  # only the workers ran trials
    assert (study / "study.md").exists()


def test_phases_start_from_the_best_of_the_one_before(ds, tmp_path):
    a = _space(tmp_path, "hidden_units: {type: categorical, choices: [8, 24]}\n", "a.yaml")
    b = _space(tmp_path, LR, "b.yaml")
    study = tmp_path / "ph"
    assert main(["tune", *_base(ds), "--phases", f"{a},{b}", "--trials", "2", "--study_dir", str(study),
                 "--sampler", "random"]) == 0
    first = _trials(study, "seqrec-a")
    best_hidden = max((t for t in first if t.value is not None), key=lambda t: t.value).params["hidden_units"]
    for t in _trials(study, "seqrec-b"):
        assert load_config(Path(t.user_attrs["train_dir"]) / "config.yaml").model.hidden_units == best_hidden
    assert load_config(study / "best.yaml").model.hidden_units == best_hidden


def test_every_phase_is_checked_before_the_first_trial(ds, tmp_path, capsys):
    """A broken later phase, or phases maximising different metrics (their best trials are
    compared), stops the study before phase one trains anything, naming the file and line."""
    a = _space(tmp_path, "metric: ndcg@10\nhidden_units: {type: categorical, choices: [8, 24]}\n", "a.yaml")
    typo = _space(tmp_path, LR + "dropout: {type: float, low: 0.1, high: 0.5}\n", "typo.yaml")
    other = _space(tmp_path, "# the lr phase\nmetric: hr@10\n" + LR, "other.yaml")
    for second, expect in ((typo, "typo.yaml, line 2: 'dropout' is not a setting of sasrec"),
                           (other, "other.yaml, line 2: phase metric hr@10 differs from ndcg@10 (")):
        study = tmp_path / second.stem
        assert main(["tune", *_base(ds), "--phases", f"{a},{second}", "--trials", "1",
                     "--study_dir", str(study)]) == 2
        err = capsys.readouterr().err
        assert expect in err, err
        assert not (study / "trials").exists() and not (study / "study.db").exists()
    # one --tune_metric for all phases overrides the spaces' own
    assert main(["tune", *_base(ds, "--num_epochs", "1"), "--phases", f"{a},{other}", "--trials", "1",
                 "--study_dir", str(tmp_path / "one"), "--tune_metric", "mrr@10"]) == 0
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["metric"] == "mrr@10"


def test_a_phase_that_finds_nothing_better_leaves_the_earlier_best(ds, tmp_path, monkeypatch):
    """The seed's workflow keeps what worked: phase b's trials all fall short of phase a's best,
    so phase c starts from a's best configuration (not b's), and a's trial is the result."""
    import optuna

    from seqrec.tune import study as study_mod

    values = {"a": ({"hidden_units": 24}, 0.5), "b": ({"lr": 0.01}, 0.3), "c": ({"dropout_rate": 0.4}, 0.45)}
    dists = {"hidden_units": optuna.distributions.CategoricalDistribution([8, 24]),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "dropout_rate": optuna.distributions.FloatDistribution(0.0, 0.5)}
    started_from = {}

    def fake_phase(base, space, opts, name, log=print):
        phase = name.rsplit("-", 1)[-1]
        started_from[phase] = base
        study = optuna.create_study(study_name=name, direction="maximize")
        params, value = values[phase]
        for p, v in ((params, value), ({k: dists[k].low if hasattr(dists[k], "low") else 8 for k in params}, 0.1)):
            study.add_trial(optuna.trial.create_trial(params=p, distributions={k: dists[k] for k in p}, value=v,
                                                      user_attrs={"train_dir": f"{name}/{v}", "best_epoch": 2}))
        return study, "ndcg@10"

    monkeypatch.setattr(study_mod, "run_phase", fake_phase)
    monkeypatch.setattr(study_mod, "_test_once", lambda best, opts, log: {"trial_run": best.user_attrs["train_dir"]})
    monkeypatch.setattr("seqrec.tune.report.write_study_report", lambda *a, **k: None)
    spaces = []
    for name, text in (("a", "hidden_units: {type: categorical, choices: [8, 24]}\n"), ("b", LR),
                       ("c", "dropout_rate: {type: float, low: 0.0, high: 0.5}\n")):
        spaces.append(str(_space(tmp_path, text, f"{name}.yaml")))
    base = resolve_config({"model": "sasrec", "dataset": str(ds.path), "maxlen": 10, "hidden_units": 16})
    opts = study_mod.TuneOptions(study_dir=tmp_path / "st", trials=2)
    summary = study_mod.run_tune(base, spaces, opts, log=None)
    assert started_from["b"].model.hidden_units == 24
    assert started_from["c"].model.hidden_units == 24 and started_from["c"].train.lr == base.train.lr  # not b's 0.01
    assert summary["best_study"].endswith("-a") and summary["best_valid"] == 0.5
    best = load_config(tmp_path / "st" / "best.yaml")
    assert best.model.hidden_units == 24 and best.train.lr == base.train.lr


def test_grid_sampler_and_a_bad_metric(ds, tmp_path, capsys):
    space = _space(tmp_path, "hidden_units: {type: categorical, choices: [8, 16]}\n")
    study = tmp_path / "g"
    assert main(["tune", *_base(ds), "--space", str(space), "--trials", "2", "--sampler", "grid",
                 "--study_dir", str(study)]) == 0
    assert sorted(t.params["hidden_units"] for t in _trials(study)) == [8, 16]
    assert main(["tune", *_base(ds), "--space", str(space), "--trials", "1", "--study_dir", str(tmp_path / "m"),
                 "--tune_metric", "auc@10"]) == 2
    assert "--tune_metric" in capsys.readouterr().err
    assert not (tmp_path / "m" / "trials").exists()


@pytest.mark.parametrize("name", ["median", "hyperband"])
def test_no_pruner_stops_a_trial_before_prune_after_epochs(name):
    """Early epochs score noise: a trial far below the others is stopped only once it has
    trained ``prune_after`` epochs (the default of 2 stopped the best configuration on ML-100K)."""
    import optuna

    from seqrec.tune.study import PRUNE_AFTER, _pruner

    assert PRUNE_AFTER >= 5
    study = optuna.create_study(direction="maximize", pruner=_pruner(name, prune_after=4),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):  # good trials: 0.1 at every epoch
        t = study.ask()
        for epoch in range(1, 30):
            t.report(0.1, epoch)
        study.tell(t, 0.1)
    t = study.ask()
    stopped_at = None
    for epoch in range(1, 30):
        t.report(0.001, epoch)
        if t.should_prune():
            stopped_at = epoch
            break
    if name == "median":
        assert stopped_at == 4
    else:  # Hyperband's brackets compare a trial with its own bracket only: it may never be stopped here
        assert stopped_at is None or stopped_at >= 4


def test_prune_after_must_not_be_negative(tmp_path, capsys):
    from seqrec.cli import main

    assert main(["tune", "--model", "sasrec", "--space", "lr", "--study_dir", str(tmp_path / "s"),
                 "--prune_after", "-1"]) != 0
    assert "--prune_after at least 0" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
