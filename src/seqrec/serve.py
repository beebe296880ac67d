"""``seqrec serve``: recommendations over HTTP (FastAPI + uvicorn; ``pip install 'seqrec[serve]'``).

Endpoints (OpenAPI docs at ``/docs``)::

    POST /recommend        {"user": ID} or {"history": [item ids], "timestamps": [...], "next_time": T|"now"},
                           plus "k" (default 10) and "exclude_seen" (default true)
    POST /recommend/batch  {"requests": [ ...the bodies above... ]}
    GET  /health           {"status": "ok"}
    GET  /model            model, dataset, configuration and test metrics of the run

Concurrent requests are gathered into one forward pass (micro-batching: up to ``max_batch``
requests, waiting at most ``max_wait_ms`` for more), so throughput grows with concurrency; the
size of the pass that answered a request is in its ``X-Seqrec-Batch`` header. Each request is
checked before it joins a batch, so one bad request never fails the others. Errors are JSON
``{"error": message}``: 404 for an unknown user, 400 for other bad values (unknown items, named;
timestamps not matching the history; ``k`` out of range), 422 for a malformed body.

Time at inference (time-aware models): ``next_time`` is when the recommended interaction
happens (Unix seconds, or ``"now"``); without it, the last interaction plus the history's
median gap is assumed, as in ``seqrec recommend``. A history without ``timestamps`` is taken
as one interaction per day ending now.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import Any, Union

from .api import Recommender, UnknownIdError

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field
except ImportError:  # pragma: no cover - the optional extra
    FastAPI = None

Id = Union[int, str]


def _require() -> None:
    if FastAPI is None:
        raise ValueError("seqrec serve needs FastAPI and uvicorn: pip install 'seqrec[serve]'")


if FastAPI is not None:

    class RecommendBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user: Id | None = Field(None, description="a user of the data set (source id)")
        history: list[Id] | None = Field(None, description="item ids (source ids), oldest first")
        timestamps: list[float] | None = Field(None, description="Unix seconds, one per history item")
        next_time: float | str | None = Field(None, description="when the recommended interaction happens: Unix "
                                                                "seconds or \"now\" (time-aware models)")
        k: int = Field(10, description="how many items")
        exclude_seen: bool = Field(True, description="leave out the items of the history")

    class BatchBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        requests: list[RecommendBody]


class MicroBatcher:
    """Gathers queries arriving together into one :meth:`Recommender.answer` call."""

    def __init__(self, rec: Recommender, max_batch: int = 64, max_wait_ms: float = 2.0):
        self.rec, self.max_batch, self.max_wait = rec, max_batch, max_wait_ms / 1000.0
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqrec-forward")
        self.task: asyncio.Task | None = None

    async def submit(self, queries: list) -> tuple[list, int]:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((queries, fut))
        return await fut

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while sum(len(q) for q, _ in jobs) < self.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            queries = [q for qs, _ in jobs for q in qs]
            try:
                answers = await loop.run_in_executor(self.pool, self.rec.answer, queries)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
                for _, fut in jobs:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            at = 0
            for qs, fut in jobs:
                if not fut.done():
                    fut.set_result((answers[at: at + len(qs)], len(queries)))
                at += len(qs)


def create_app(rec: Recommender, *, max_batch: int = 64, max_wait_ms: float = 2.0, info: dict | None = None):
    """The FastAPI application serving ``rec`` (the model is already loaded)."""
    _require()
    batcher = MicroBatcher(rec, max_batch, max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.task = asyncio.create_task(batcher.run())
        yield
        batcher.task.cancel()
        batcher.pool.shutdown(wait=False)

    app = FastAPI(title="seqrec", description="Next-item recommendations from a trained seqrec run.",
                  lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"malformed request body: {where + ': ' if where else ''}{first.get('msg', 'invalid')}"
        return JSONResponse(status_code=422, content={"error": msg})

    def query_of(body: "RecommendBody"):
        return rec.query(body.user, history=body.history, timestamps=body.timestamps, next_time=body.next_time,
                         k=body.k, exclude_seen=body.exclude_seen)

    def error(exc: Exception, index: int | None = None) -> JSONResponse:
        where = f"request {index}: " if index is not None else ""
        status = 404 if isinstance(exc, UnknownIdError) and "user" in str(exc).split(" ")[0] else 400
        return JSONResponse(status_code=status, content={"error": where + str(exc)})

    def items(recs: list[dict]) -> list[dict]:
        return [{"rank": r["rank"], "item": r["item"], "score": r["score"], "title": r["title"]} for r in recs]

    @app.post("/recommend")
    async def recommend(body: RecommendBody):
        try:
            q = query_of(body)
        except ValueError as exc:
            return error(exc)
        (recs,), size = await batcher.submit([q])
        return JSONResponse({"items": items(recs)}, headers={"X-Seqrec-Batch": str(size)})

    @app.post("/recommend/batch")
    async def recommend_batch(body: BatchBody):
        queries = []
        for i, b in enumerate(body.requests):
            try:
                queries.append(query_of(b))
            except ValueError as exc:
                return error(exc, i)
        answers, size = await batcher.submit(queries) if queries else ([], 0)
        return JSONResponse({"results": [{"items": items(r)} for r in answers]}, headers={"X-Seqrec-Batch": str(size)})

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/model")
    async def model():
        return info or {}

    return app


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", max_batch: int = 64,
          max_wait_ms: float = 2.0, backend: str = "torch", graph: str | None = None, compile: bool = False,
          log=print) -> None:
    """Load the run once (a run that cannot be loaded stops here, before any socket is opened)
    and serve it until interrupted."""
    _require()
    import uvicorn

    from .api import load
    from .runs.folder import RunFolder

    rec = load(run_dir, device=device, backend=backend, graph=graph, compile=compile)
    folder = RunFolder(run_dir)
    info: dict[str, Any] = {"run": str(run_dir), "model": rec.cfg.describe_model(), "backend": backend,
                            "dataset": rec.dataset.name,
                            "users": rec.n_users, "items": rec.n_items, "config": rec.cfg.to_dict(),
                            "test_metrics": folder.test_metrics()}
    app = create_app(rec, max_batch=max_batch, max_wait_ms=max_wait_ms, info=info)
    if log:
        log(f"serving {info['model']} on {info['dataset']} from {run_dir} ({backend} backend) at "
            f"http://{host}:{port} (docs: /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
