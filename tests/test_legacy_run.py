"""A run folder written before the product cut (flat config.yaml) still evaluates and
recommends, with the numbers the old code gave (tests/fixtures/legacy_v0/README.md)."""

import json
import shutil
from pathlib import Path

import pytest

from seqrec.cli import main
from seqrec.data.download import seqrec_home
from seqrec.runs import RunFolder

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "legacy_v0"


@pytest.fixture()
def legacy_run(tmp_path):
    shutil.copytree(FIXTURE / "dataset", seqrec_home() / "datasets" / "legacy_syn", dirs_exist_ok=True)
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    return run


def test_its_flat_config_is_read_as_the_model_it_trained(legacy_run):
    cfg = RunFolder(legacy_run).config()
    assert cfg.model_name == "tisasrec" and cfg.model.mhc.expansion_rate == 2  # the seed's default form
    assert (cfg.model.hidden_units, cfg.data.maxlen, cfg.eval.negatives) == (8, 10, 5)


def test_it_evaluates_to_the_old_codes_numbers(legacy_run, capsys):
    assert main(["evaluate", str(legacy_run), "--device", "cpu"]) == 0  # its own 5 negatives by default
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = json.loads((FIXTURE / "evaluate_expected.json").read_text())
    for proto in ("full", "sampled"):
        for k, v in want[proto].items():
            assert got[proto][k] == pytest.approx(v, abs=1e-9), (proto, k)


def test_it_recommends_what_the_old_code_did(legacy_run, capsys):
    assert main(["recommend", str(legacy_run), "--user", "3", "--k", "5"]) == 0
    assert main(["recommend", str(legacy_run), "--history", "5,7,9", "--timestamps",
                 "1700000000,1700003600,1700007200", "--k", "5"]) == 0
    assert capsys.readouterr().out == (FIXTURE / "recommend_expected.txt").read_text()


def test_it_appears_in_compare_and_report(legacy_run, capsys):
    assert main(["compare", str(legacy_run)]) == 0
    assert "tisasrec + mHC (n=2)" in capsys.readouterr().out
    assert main(["report", str(legacy_run)]) == 0
    assert "mhc_expansion_rate | 2" in (legacy_run / "report.md").read_text()
