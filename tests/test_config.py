"""The typed run config: sections, the seed's forms, the models' own defaults, flags per model,
YAML typing and errors, the earlier flat layout."""

import dataclasses

import pytest
import yaml

from seqrec.cli import main, run_parser
from seqrec.config import (RunConfig, config_from_dict, flag_table, from_legacy, load_config, resolve_config,
                           validate_config)
from seqrec.models import MHCConfig, available_models

SEED_TABLE = {  # the SASRec.pytorch seed's argument table and its defaults
    "batch_size": 128, "lr": 0.001, "lr_decay_step": 1000, "lr_decay_rate": 0.95, "warmup_steps": 100,
    "maxlen": 200, "hidden_units": 50, "num_blocks": 2, "num_heads": 2, "dropout_rate": 0.2, "l2_emb": 0.0,
    "mhc_expansion_rate": 4, "mhc_sinkhorn_iter": 20, "mhc_init_gate": 0.01, "mhc_no_amp": False,
    "time_span": 100, "time_unit": "hour", "num_epochs": 1000,
}
SEED_FLAGS = set(SEED_TABLE) | {"dataset", "train_dir", "device", "no_time", "no_mhc"}  # all 23


def test_the_seeds_form_gives_the_seeds_models_and_defaults():
    cfg = resolve_config({})
    assert cfg.model_name == "tisasrec" and cfg.model.mhc == MHCConfig()  # no flag: TiSASRec + mHC
    flags = cfg.flags()
    for k, v in SEED_TABLE.items():
        assert flags[k] == v, k
    assert cfg.train.device == "auto"  # the one deliberate change: cuda when available
    assert resolve_config({"no_time": True}).describe_model() == "sasrec + mHC (n=4)"
    assert resolve_config({"no_mhc": True}).describe_model() == "tisasrec"
    assert resolve_config({"no_time": True, "no_mhc": True}).describe_model() == "sasrec"


def test_all_seed_flags_parse_under_their_names(tmp_path):
    parser = run_parser("train", "tisasrec")
    argv = []
    for k in sorted(SEED_FLAGS):
        if k in ("no_time", "no_mhc", "mhc_no_amp"):
            argv.append(f"--{k}")
        else:
            argv += [f"--{k}", {"dataset": "ml-1m", "train_dir": str(tmp_path), "device": "cpu",
                                "time_unit": "day"}.get(k, str(SEED_TABLE.get(k, 1)))]
    args, extra = parser.parse_known_args(argv)
    assert not extra and args.no_time and args.no_mhc and args.mhc_no_amp is True


def test_a_named_model_gets_its_own_defaults_and_no_mhc():
    ss = resolve_config({"model": "ss4rec"})
    assert ss.model_name == "ss4rec" and ss.model.hidden_units == 64  # SS4Rec's own, not the seed's 50
    sas = resolve_config({"model": "sasrec"})
    assert sas.model.mhc is None and sas.model.hidden_units == 50
    assert resolve_config({"model": "sasrec", "mhc": True}).model.mhc == MHCConfig()
    assert resolve_config({"model": "tisasrec", "mhc_expansion_rate": 2}).model.mhc.expansion_rate == 2
    with pytest.raises(ValueError, match="--no_time asks for SASRec, but the model is 'tisasrec'"):
        resolve_config({"model": "tisasrec", "no_time": True})
    with pytest.raises(ValueError, match="--mhc is not an option of ss4rec"):
        resolve_config({"model": "ss4rec", "mhc": True})
    with pytest.raises(ValueError, match="--no_mhc with --mhc_expansion_rate"):
        resolve_config({"no_mhc": True, "mhc_expansion_rate": 2})


def test_ss4rec_and_sasrec_train_with_no_extra_flag(tmp_path, capsys):
    for model in ("ss4rec", "sasrec"):
        run = tmp_path / model
        assert main(["train", "--model", model, "--dataset", "synthetic", "--debug", "--train_dir", str(run),
                     "--maxlen", "20", "--hidden_units", "16", "--eval_negatives", "10", "--num_threads", "1",
                     "--progress", "false"]) == 0, capsys.readouterr().err
        saved = load_config(run / "config.yaml")
        assert saved.model_name == model and not saved.has_mhc and saved.train.profile == "debug"
        assert saved.train.debug_users == 512 and saved.train.num_epochs == 2


def test_help_lists_the_chosen_models_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "ss4rec", "--help"])
    out = capsys.readouterr().out
    assert "model (ss4rec)" in out and "--s5_state" in out and "Mamba causal conv width" in out
    assert "--num_heads" not in out and "--mhc_expansion_rate" not in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])  # the seed's form: TiSASRec's options, mHC included
    out = capsys.readouterr().out
    assert "model (tisasrec)" in out and "--time_span" in out and "--mhc_sinkhorn_iter" in out
    assert "--s5_state" not in out


def test_flags_are_unique_and_sections_typed():
    for name in available_models():
        table = flag_table(name)  # raises on a clash between a model option and a section's
        assert table["eval_batch_size"][0] == "eval" and table["batch_size"][0] == "train"
        assert table["maxlen"][0] == "data"
    cfg = resolve_config({"model": "sasrec", "eval_negatives": 5, "mhc_init_gate": 0.5})
    assert cfg.eval.negatives == 5 and cfg.model.mhc.init_gate == 0.5


def test_yaml_sections_precedence_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"dataset": "ml-1m", "maxlen": 77}, "model": {"name": "sasrec",
                                    "hidden_units": 64, "mhc": {"expansion_rate": 2}}, "train": {"lr": 0.01},
                                    "eval": {"negatives": 20}, "track": {"progress": False}}))
    cfg = resolve_config({"maxlen": 33, "mhc_sinkhorn_iter": 5}, path)  # the command line wins
    assert (cfg.data.dataset, cfg.data.maxlen, cfg.train.lr, cfg.eval.negatives) == ("ml-1m", 33, 0.01, 20)
    assert cfg.model.mhc == MHCConfig(expansion_rate=2, sinkhorn_iter=5) and cfg.model.hidden_units == 64
    assert cfg.train.batch_size == 128  # untouched: the section's default
    assert config_from_dict(cfg.to_dict()) == cfg
    assert resolve_config({"no_mhc": True}, path).model.mhc is None
    assert resolve_config({"model": "tisasrec"}, path).model_name == "tisasrec"  # another model: its defaults


def test_yaml_values_take_the_fields_type(tmp_path):
    path = tmp_path / "c.yaml"
    # PyYAML (YAML 1.1) reads 1e-4 as the *string* '1e-4'; a config must still mean a number.
    path.write_text("train:\n  lr: 1e-4\n  weight_decay: 5e-5\n  grad_clip: 1\ndata:\n  maxlen: 5e1\n"
                    "model:\n  name: ss4rec\n  min_gap: 5e-1\n  embed_norm: yes\n")
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "1e-4"  # the YAML quirk itself
    cfg = load_config(path)
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float) and cfg.data.maxlen == 50
    assert cfg.train.grad_clip == 1.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.model.min_gap == 0.5 and cfg.model.embed_norm is True
    for text, message in [("train:\n  lr: fast\n", "train.lr must be a number"),
                          ("data:\n  maxlen: 2.5\n", "data.maxlen must be an integer"),
                          ("model:\n  name: sasrec\n  norm_first: maybe\n", "model.norm_first must be true or false"),
                          ("train:\n  batch_size: [64, 128]\n", "train.batch_size must be an integer, got a list"),
                          ("train:\n  lerning_rate: 1\n", "unknown option 'lerning_rate'"),
                          ("model:\n  name: sasrec\n  hiden_units: 8\n", "did you mean 'hidden_units'"),
                          ("model:\n  name: ss4rec\n  num_heads: 2\n", "unknown option 'num_heads'.*for model 'ss4rec'"),
                          ("trian:\n  lr: 1\ndata:\n  maxlen: 3\n", "unknown section 'trian' \\(did you mean 'train'"),
                          ("model:\n  name: bert4rec\n", "unknown model 'bert4rec'")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_config(path)
        with pytest.raises(ValueError, match=str(path)):
            load_config(path)


@pytest.mark.parametrize("override,message", [
    ({"hidden_units": 50, "num_heads": 3}, "divisible by num_heads"),
    ({"time_unit": "week"}, "--time_unit must be one of"),
    ({"dropout_rate": 1.5}, "--dropout_rate must be in"),
    ({"metric": "auc"}, "--metric"),
    ({"metric": "ndcg@50"}, "K in 5, 10, 20"),
    ({"maxlen": 0}, "--maxlen must be a positive integer"),
    ({"lr_plateau_patience": -1}, "--lr_plateau_patience must be a non-negative integer"),
    ({"lr_plateau_factor": 1.5}, "--lr_plateau_factor must be in \\(0, 1\\)"),
])
def test_invalid_settings_fail_with_the_flag(override, message):
    cfg = resolve_config({"dataset": "x", "train_dir": "y", **override})
    with pytest.raises(ValueError, match=message):
        validate_config(cfg)


def test_the_earlier_flat_layout_is_read():
    flat = {"dataset": "ml-1m", "model": "tisasrec", "no_mhc": False, "mhc": True, "mhc_expansion_rate": 2,
            "maxlen": 50, "lr": 0.01, "eval_negatives": 20, "time_scale": "days", "s5_state": 32,
            "block_form": "standard", "positions": "end", "score_dropout": 0.0, "progress": False}
    cfg = from_legacy(flat)
    assert cfg.model_name == "tisasrec" and cfg.model.mhc.expansion_rate == 2
    assert (cfg.data.maxlen, cfg.train.lr, cfg.eval.negatives, cfg.track.progress) == (50, 0.01, 20, False)
    assert config_from_dict(flat) == cfg  # detected as flat
    old_ss4rec = from_legacy({"model": "ss4rec", "no_mhc": True, "time_scale": "days", "mhc_expansion_rate": 4})
    assert old_ss4rec.model.time_unit == "day"
    assert from_legacy({"model": "sasrec"}).has_mhc  # the old default: mHC unless no_mhc
    with pytest.raises(ValueError, match="uses block_form, which left seqrec"):
        from_legacy({"model": "sasrec", "block_form": "sasrec"})


def test_replace_and_flags_views():
    cfg = resolve_config({"model": "sasrec", "mhc": True})
    new = cfg.replace(train={"lr": 0.5}, eval={"negatives": 0})
    assert (new.train.lr, new.eval.negatives, cfg.train.lr) == (0.5, 0, 0.001)
    assert cfg.model_flags()["mhc"] is True and cfg.model_flags()["mhc_expansion_rate"] == 4
    assert "lr" not in cfg.model_flags()
    assert isinstance(dataclasses.replace(cfg), RunConfig)
