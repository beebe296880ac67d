"""Every shipped config resolves, validates and builds its model."""

from pathlib import Path

import pytest

from seqrec.models import build_model, get_model_class
from seqrec.train.config import resolve_config, validate_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid(path):
    cfg = resolve_config({"config": str(path), "train_dir": "unused"})
    validate_config(cfg)
    cls = get_model_class(cfg["model"])
    if cfg["mhc"]:
        assert "mhc" in cls.config_class.__dataclass_fields__
    model = build_model(cfg["model"], n_items=50, **cfg)
    assert model.n_items == 50
    assert cfg["dataset"]
