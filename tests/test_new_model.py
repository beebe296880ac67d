"""Adding a model is one file: a model defined here, registered, is trained, evaluated,
recommended and compared through the CLI and the Python API with no other file touched."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import seqrec.api
from seqrec.cli import main
from seqrec.config import load_config
from seqrec.models import SequentialRecommender, register_model
from seqrec.models.registry import _REGISTRY
from seqrec.utils.options import opt


@dataclass
class BagConfig:
    hidden_units: int = opt(16, "hidden dimension", low=1)
    decay: float = opt(0.5, "weight of each older item relative to the next", low=0, high=1)


class Bag(SequentialRecommender):
    """Position i: an exponentially decayed sum of the item embeddings up to i (causal)."""

    config_class = BagConfig
    uses_time = False

    def __init__(self, n_items: int, config: BagConfig | None = None, maxlen: int = 200):
        super().__init__(n_items, config, maxlen)
        self.item_emb = nn.Embedding(n_items + 1, self.config.hidden_units, padding_idx=0)
        self.norm = nn.LayerNorm(self.config.hidden_units)

    def item_embedding_weight(self):
        return self.item_emb.weight

    def forward(self, batch):
        items = batch["items"]  # (B, L)
        e = self.item_emb(items)  # (B, L, D)
        L = items.shape[1]
        i = torch.arange(L)
        w = torch.where(i[None, :] <= i[:, None], self.config.decay ** (i[:, None] - i[None, :]).float(), 0.0)
        h = self.norm(torch.einsum("ij,bjd->bid", w, e))  # (B, L, D)
        return h * (items != 0).unsqueeze(-1)


@pytest.fixture()
def bag():
    register_model("bag")(Bag)
    yield
    _REGISTRY.pop("bag", None)


def test_a_model_in_one_file_goes_through_every_command(bag, tmp_path, capsys):
    ds = ["--dataset", "synthetic", "--maxlen", "20", "--eval_negatives", "10", "--num_threads", "1",
          "--progress", "false", "--num_epochs", "2", "--loss", "ce"]
    with pytest.raises(SystemExit):
        main(["train", "--model", "bag", "--help"])
    out = capsys.readouterr().out
    assert "model (bag)" in out and "--decay" in out and "weight of each older item" in out
    runs = []
    for decay in ("0.5", "0.9"):
        run = tmp_path / f"bag{decay}"
        assert main(["train", "--model", "bag", *ds, "--decay", decay, "--train_dir", str(run)]) == 0
        runs.append(run)
    assert load_config(runs[1] / "config.yaml").model == BagConfig(decay=0.9)
    assert main(["evaluate", str(runs[0]), "--device", "cpu"]) == 0
    assert main(["recommend", str(runs[0]), "--user", "1", "--k", "3"]) == 0
    capsys.readouterr()
    assert main(["compare", *map(str, runs)]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0]
    assert "decay" in header and "hidden_units" not in header  # the option that differs, not those alike
    assert "| 0.9 |" in table
    assert "| decay | 0.9 |" in (runs[1] / "report.md").read_text()
    rec = seqrec.api.load(runs[0])
    top = rec.recommend(history=[1, 2, 3], k=4)
    assert len(top) == 4 and rec.cfg.model_name == "bag"
    assert main(["compare", *map(str, runs), "--paired"]) == 0
