"""``seqrec pipeline``: the seeds' rented-GPU flow as one command that survives preemption.

Stages, everything under ``DIR`` (so ``DIR`` can be a mounted volume)::

    fetch       the data: the dataset's GroupLens download (checksum), a local file or folder,
                or an http(s)/file URL of a raw file or of a zip of a prepared dataset folder
                (partial downloads resume)
    prepare     the dataset folder under DIR/home/datasets
    verify      the pre-flight check; a failed check stops here, before any training
    debug       the debug profile (a slice of users, 2 epochs) in DIR/runs/debug
    production  the real run in DIR/runs/production (after a time and cost estimate);
                --max_hours stops it cleanly with a checkpoint, the next run continues it
    report      test metrics, the run's report.md and its `seqrec compare` line in DIR/report.md

``DIR/pipeline.json`` records each stage's state: running the same command again skips the
finished stages and resumes the production run exactly from its last checkpoint; a stage that
failed is retried; a changed configuration is refused unless ``--restart``. Every stage line
also goes to ``DIR/pipeline.log``. ``--debug`` stops after the debug stage.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import zipfile
from pathlib import Path

from .config import RunConfig
from .utils.io import atomic_dir, write_json

STAGES = ("fetch", "prepare", "verify", "debug", "production", "report")
#: Settings a rerun may change (they do not change what is computed).
RUNTIME = {("train", "num_threads"), ("train", "device"), ("track", "progress"), ("train", "max_hours")}


class PipelineError(ValueError):
    """A stage failed; the message says which and why."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fingerprint(cfg: RunConfig, data: str | None) -> dict:
    d = cfg.to_dict()
    for section, key in RUNTIME:
        d[section].pop(key, None)
    d["train"].pop("train_dir", None)
    d["train"].pop("profile", None)
    return {"config": d, "data": data}


class Pipeline:
    def __init__(self, cfg: RunConfig, out: str | Path, *, data: str | None = None, debug_only: bool = False,
                 restart: bool = False, price_per_hour: float | None = None, log=print):
        self.out = Path(out)
        self.cfg, self.data, self.debug_only = cfg, data, debug_only
        self.price = price_per_hour
        self._print = log
        self.state_path = self.out / "pipeline.json"
        self.home = self.out / "home"
        self.out.mkdir(parents=True, exist_ok=True)
        fp = _fingerprint(cfg, data)
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else None
        if state is not None and state.get("fingerprint") != fp:
            if not restart:
                raise PipelineError(
                    f"{self.out} holds a pipeline of another configuration or data (its pipeline.json): run the "
                    "original command again to continue it, or add --restart to start over with this one")
            self.log(f"--restart: the previous pipeline in {self.out} is discarded")
            shutil.rmtree(self.out / "runs", ignore_errors=True)
            state = None
        self.state = state or {"fingerprint": fp, "stages": {}, "created": _now()}
        self._save()

    # -- bookkeeping -------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        line = f"[{_now()}] {msg}"
        with open(self.out / "pipeline.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self._print:
            self._print(msg)

    def _save(self) -> None:
        write_json(self.state_path, self.state)

    def _mark(self, stage: str, state: str, **extra) -> None:
        rec = self.state["stages"].setdefault(stage, {})
        rec.update(state=state, **extra, **({"ended": _now()} if state in ("done", "failed") else {"started": _now()}))
        self._save()

    def done(self, stage: str) -> bool:
        return self.state["stages"].get(stage, {}).get("state") == "done"

    # -- the flow ----------------------------------------------------------------------------
    def run(self) -> dict:
        os.environ["SEQREC_HOME"] = str(self.home.resolve())  # datasets and downloads live under DIR
        stages = STAGES[:4] + ("report",) if self.debug_only else STAGES
        for stage in stages:
            if self.done(stage) and stage != "report":
                self.log(f"{stage}: done earlier, skipped")
                continue
            self.log(f"{stage}: starting")
            self._mark(stage, "running")
            try:
                result = getattr(self, f"_{stage}")()
            except BaseException as exc:
                from .train.trainer import TrainingStopped

                if isinstance(exc, TrainingStopped):
                    self._mark(stage, "paused", reason=str(exc))
                    self.log(f"{stage}: paused: {exc}")
                    raise
                self._mark(stage, "failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self.log(f"{stage}: failed: {exc}")
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise PipelineError(f"stage {stage!r} failed: {exc} (fix it and run the same command again: the "
                                    "finished stages are kept)") from exc
            self._mark(stage, "done", **({"result": result} if isinstance(result, dict) else {}))
            self.log(f"{stage}: done")
        return self.state["stages"].get("report", {}).get("result", {})

    # -- stages ------------------------------------------------------------------------------
    def _dataset_name(self) -> str:
        return Path(str(self.cfg.data.dataset)).name

    def _fetch(self) -> dict:
        from .data import download

        data = self.data
        if data is None:
            name = self._dataset_name()
            if name in download.SOURCES:
                folder = download.fetch(name)  # GroupLens, checksum verified; cached under DIR/home/raw
                return {"raw": str(folder)}
            if (Path(str(self.cfg.data.dataset)) / "manifest.json").exists():
                return {"prepared": str(self.cfg.data.dataset)}
            if name == "synthetic":
                return {"raw": None}
            raise PipelineError(f"no --data given and {self.cfg.data.dataset!r} is not a downloadable dataset: pass "
                                "--data PATH_OR_URL (a ratings file, a folder, or a zip of a prepared dataset)")
        if data.startswith(("http://", "https://", "file://")):
            fname = Path(data.split("?")[0]).name or "data"
            path = download.download_resumable(data, self.out / "downloads" / fname)
            return {"raw": str(path)}
        if not Path(data).exists():
            raise PipelineError(f"--data {data}: no such file or folder")
        return {"raw": str(Path(data).resolve())}

    def _prepare(self) -> dict:
        from .data.datasets import default_dataset_dir, prepare_dataset
        from .data.store import load_dataset

        fetched = self.state["stages"]["fetch"].get("result", {})
        name = self._dataset_name()
        if fetched.get("prepared"):
            ds = load_dataset(fetched["prepared"])
        else:
            raw = fetched.get("raw")
            if raw and zipfile.is_zipfile(raw) and _is_prepared_archive(raw):
                target = default_dataset_dir(name)
                with zipfile.ZipFile(raw) as z, atomic_dir(target, "manifest.json") as tmp:
                    _extract_prepared(z, tmp)
                ds = load_dataset(target)
            else:
                ds = prepare_dataset(name, raw=raw, log=self.log)
        ds.verify()
        return {"dataset": str(ds.path), "users": ds.n_users, "items": ds.n_items, "interactions": len(ds)}

    def _run_cfg(self, profile: str | None, run: str) -> RunConfig:
        dataset = self.state["stages"]["prepare"]["result"]["dataset"]
        train = {"profile": profile, "train_dir": str(self.out / "runs" / run)}
        if profile == "debug":
            train["max_hours"] = 0.0  # the time budget is the production run's
        return self.cfg.replace(data={"dataset": dataset}, train=train)

    def _verify(self) -> dict:
        from .train.verify import format_checks, preflight

        checks = preflight(self._run_cfg("production", "production"), log=None)
        for line in format_checks(checks).splitlines():
            self.log(f"  {line}")
        failed = [c.name for c in checks if not c.ok]
        if failed:
            raise PipelineError(f"the pre-flight check failed: {', '.join(failed)} (see above or pipeline.log)")
        step = next(c for c in checks if c.name == "training step")
        return {"step_seconds": step.data.get("seconds"), "step_batch": step.data.get("batch_size")}

    def _debug(self) -> dict:
        from .train.trainer import train

        res = train(self._run_cfg("debug", "debug"), log=self.log, overwrite=True)
        return {"test_hr@10": res["test_full"]["hr@10"], "test_ndcg@10": res["test_full"]["ndcg@10"]}

    def _estimate(self, cfg: RunConfig) -> None:
        """Time per epoch and for the whole run from the pre-flight step timing and the dataset
        size; with --price_per_hour, the cost."""
        v = self.state["stages"]["verify"].get("result", {})
        users = self.state["stages"]["prepare"]["result"]["users"]
        if not v.get("step_seconds") or not v.get("step_batch"):
            return
        per_seq = v["step_seconds"] / v["step_batch"]
        epoch_s = per_seq * users * 1.1  # + validation, roughly
        total_h = epoch_s * cfg.train.num_epochs / 3600
        cost = f", about {total_h * self.price:,.2f} at {self.price:g}/hour" if self.price else ""
        self.log(f"estimate on this device: ~{epoch_s:,.0f} s per epoch; at most {cfg.train.num_epochs} epochs = "
                 f"~{total_h:,.2f} h{cost} (early stopping usually ends sooner; one measured step, so rough)")

    def _production(self) -> dict:
        from .runs.folder import LAST, RunFolder
        from .train.trainer import train

        cfg = self._run_cfg("production", "production")
        folder = RunFolder(cfg.train.train_dir)
        resume = (folder / LAST).exists() and folder.is_run()
        if resume:
            self.log(f"production: resuming {folder.path} from its last checkpoint")
            saved = folder.config()
            cfg = saved.replace(train={k: getattr(cfg.train, k) for k in ("num_threads", "device", "max_hours")},
                                track={"progress": cfg.track.progress})
        else:
            self._estimate(cfg)
        res = train(cfg, log=self.log, resume=resume, overwrite=not resume, preflight=False)
        return {"test_hr@10": res["test_full"]["hr@10"], "test_ndcg@10": res["test_full"]["ndcg@10"]}

    def _report(self) -> dict:
        from .track.compare import load_runs, to_markdown

        run = "debug" if self.debug_only else "production"
        run_dir = self.out / "runs" / run
        test = json.loads((run_dir / "test_metrics.json").read_text())
        table = to_markdown(load_runs([run_dir]))
        stages = self.state["stages"]
        lines = [f"# Pipeline {self.out.name}", "", f"Run folder `{run_dir}` ({run}); its report: `{run_dir / 'report.md'}`.",
                 "", "| stage | state | ended |", "|---|---|---|"]
        lines += [f"| {s} | {stages.get(s, {}).get('state', '-')} | {stages.get(s, {}).get('ended', '-')} |"
                  for s in STAGES if s != "report"]
        full = test["test_full"]
        lines += ["", f"Test (full ranking, history excluded): HR@10 {full['hr@10']:.4f}, NDCG@10 {full['ndcg@10']:.4f}, "
                      f"best epoch {test.get('best_epoch')}.", "", "`seqrec compare`:", "", table, ""]
        (self.out / "report.md").write_text("\n".join(lines), encoding="utf-8")
        self.log(f"report: {self.out / 'report.md'}: test HR@10 {full['hr@10']:.4f} NDCG@10 {full['ndcg@10']:.4f}")
        return {"run": str(run_dir), "test_full": full, "best_epoch": test.get("best_epoch")}


def _is_prepared_archive(path: str) -> bool:
    with zipfile.ZipFile(path) as z:
        return any(Path(n).name == "manifest.json" for n in z.namelist())


def _extract_prepared(z: zipfile.ZipFile, tmp: Path) -> None:
    """A zip of a prepared dataset folder (its files at the top, or inside one folder)."""
    from .data.download import _safe_members

    _safe_members(z, z.filename or "archive")
    z.extractall(tmp)
    entries = [p for p in tmp.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        top = entries[0]
        for child in list(top.iterdir()):
            shutil.move(str(child), str(tmp / child.name))
        top.rmdir()
    if not (tmp / "manifest.json").exists():
        raise PipelineError("the archive holds no manifest.json at its top: not a prepared dataset folder")


__all__ = ["Pipeline", "PipelineError", "STAGES"]
