"""Every shipped config loads, validates, builds its model and is named after what it holds."""

from pathlib import Path

import pytest

from seqrec.config import load_config, resolve_config, validate_config
from seqrec.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
MODELS = {"sasrec": ("sasrec", False), "tisasrec": ("tisasrec", False), "sasrec-mhc": ("sasrec", True),
          "tisasrec-mhc": ("tisasrec", True), "ss4rec": ("ss4rec", False)}
DATASETS = ("ml-100k", "beauty", "sports", "ml-1m", "ml-32m")


def test_one_config_per_model_and_dataset():
    assert sorted(p.stem for p in CONFIGS) == sorted(f"{m}_{d}" for m in MODELS for d in DATASETS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_and_named_after_its_contents(path):
    cfg = resolve_config({"train_dir": "unused"}, path)
    validate_config(cfg)
    model_key, dataset = path.stem.split("_", 1)
    name, mhc = MODELS[model_key]
    assert (cfg.model_name, cfg.has_mhc, cfg.data.dataset) == (name, mhc, dataset)
    assert load_config(path).to_dict() == resolve_config({}, path).to_dict()  # the file alone names its model
    model = build_model(cfg.model_name, n_items=50, maxlen=cfg.data.maxlen, config=cfg.model)
    assert model.n_items == 50


def test_profiles_are_shipped_beside_the_configs():
    for name in ("debug", "production"):
        assert (ROOT / "configs" / "profiles" / f"{name}.yaml").is_file()
