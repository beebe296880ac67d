"""Export a prepared dataset to RecBole atomic files (the seeds' schema).

Writes ``<name>.inter`` (every interaction) and, for the temporal past/future split,
``<name>_past.inter`` / ``<name>_future.inter``, each with the header
``user_id:token  item_id:token  rating:float  timestamp:float`` (tab separated).
Ids are the dataset's contiguous ids (``ids="mapped"``, matching the saved mappings) or
the source's raw ids (``ids="raw"``).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..utils.io import write_json
from .interactions import Interactions
from .store import SeqDataset


def to_interactions(ds: SeqDataset, ids: str = "mapped", mask=None) -> Interactions:
    """The dataset's rows as an :class:`Interactions` (optionally a boolean row ``mask``)."""
    frame = pl.DataFrame(
        {
            "user": pl.Series(ds.user, dtype=pl.Int32).cast(pl.Int64),
            "item": pl.Series(ds.item, dtype=pl.Int32).cast(pl.Int64),
            "rating": pl.Series(ds.rating, dtype=pl.Float32).cast(pl.Float64).fill_nan(None),
            "timestamp": pl.Series(ds.timestamp, dtype=pl.Int64),
        }
    )
    if ids == "raw":
        um = ds.user_map().select(pl.col("id").cast(pl.Int64).alias("user"), pl.col("raw").alias("_u"))
        im = ds.item_map().select(pl.col("id").cast(pl.Int64).alias("item"), pl.col("raw").alias("_i"))
        frame = (
            frame.join(um, on="user", how="left", maintain_order="left")
            .join(im, on="item", how="left", maintain_order="left")
            .select(pl.col("_u").alias("user"), pl.col("_i").alias("item"), "rating", "timestamp")
        )
    elif ids != "mapped":
        raise ValueError(f"ids must be 'mapped' or 'raw', got {ids!r}")
    if mask is not None:
        frame = frame.filter(pl.Series(mask))
    return Interactions(frame, source=f"{ds.name} ({ids} ids)")


EXPORT_MARKER = ".seqrec-export.json"


def _claim_export_folder(folder: Path, paths: list[Path], ds: SeqDataset) -> None:
    """Refuse to overwrite files seqrec did not export (no marker in their folder); mark it ours."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file: choose another --out")
    if not (folder / EXPORT_MARKER).is_file():
        clash = [p for p in paths if p.exists()]
        if clash:
            raise ValueError(f"{clash[0]} exists and was not written by `seqrec export`; it is left as it is: "
                             "choose another --out (or --name), or move it away first")
    write_json(folder / EXPORT_MARKER, {"dataset": ds.name, "dataset_path": str(ds.path),
                                        "files": [p.name for p in paths]})


def export_recbole(
    ds: SeqDataset,
    out_dir: str | Path,
    *,
    name: str | None = None,
    ids: str = "mapped",
    temporal_fraction: float | None = 0.8,
    log=print,
) -> list[Path]:
    """Write the RecBole atomic files; returns the paths written."""
    from .readers import write_recbole_inter

    from .datasets import check_dataset_name

    name = check_dataset_name(name or ds.name)
    out_dir = Path(out_dir) / name
    paths = [out_dir / f"{name}.inter"]
    if temporal_fraction is not None:
        paths += [out_dir / f"{name}_past.inter", out_dir / f"{name}_future.inter"]
    _claim_export_folder(out_dir, paths, ds)
    write_recbole_inter(to_interactions(ds, ids), paths[0])
    if temporal_fraction is not None:
        split = ds.temporal_split(temporal_fraction)
        past, future = paths[1], paths[2]
        write_recbole_inter(to_interactions(ds, ids, split.is_past), past)
        write_recbole_inter(to_interactions(ds, ids, ~split.is_past), future)
        if log:
            s = split.stats
            log(f"temporal split at {s['cutoff_time']}: past {s['past_rows']:,} rows, future {s['future_rows']:,} rows; "
                f"{s['future_only_users']:,} users and {s['future_only_items']:,} items appear only in the future")
    if log:
        for p in paths:
            log(f"wrote {p} ({p.stat().st_size / 2**20:.1f} MiB)")
    return paths
