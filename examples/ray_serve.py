"""Serve a DenseNet with Ray Serve: replicas of the `densenet` package's model, requests batched.

    python examples/ray_serve.py --weights WEIGHTS [--replicas 2] [--port 8000]
    curl -s localhost:8000/classify -d '{"path": "examples/images/cifar100_00_49.png"}'

Each replica loads the model once; `@serve.batch` gathers the requests that arrive together (up
to --max-batch, waiting at most --wait-ms for more) into one `Model.classify` call, which runs in
a thread so that the replica keeps taking requests meanwhile (the engine releases the GIL). A
request is a JSON object naming an image file the replicas can read (`path`); the answer is
`classify --json`'s line for it, with `batch`: how many requests its call served.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from ray import serve
from starlette.requests import Request

import densenet


@serve.deployment
class DenseNetDeployment:
    def __init__(self, weights: str, top_k: int = 5, max_batch: int = 32, wait_ms: float = 10.0) -> None:
        self.model = densenet.Model.load(weights)
        self.top_k = top_k
        self.classify.set_max_batch_size(max_batch)
        self.classify.set_batch_wait_timeout_s(wait_ms / 1000)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def classify(self, paths: list[str]) -> list[dict]:
        answers = await asyncio.to_thread(self.model.classify, paths, self.top_k)
        return [dict(answer, batch=len(paths)) for answer in answers]

    async def __call__(self, request: Request) -> dict:
        body = await request.json()
        return await self.classify(str(body["path"]))


def app(weights: str, replicas: int = 2, top_k: int = 5, max_batch: int = 32, wait_ms: float = 10.0):
    """The application: `replicas` replicas, each on one CPU with one engine thread."""
    return DenseNetDeployment.options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": {"RAYON_NUM_THREADS": "1"}}},
    ).bind(weights, top_k, max_batch, wait_ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="a file the package loads (or hf:OWNER/REPO)")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--wait-ms", type=float, default=10.0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app(args.weights, args.replicas, args.top_k, args.max_batch, args.wait_ms), route_prefix="/classify")
    print(f"serving on http://{args.host}:{args.port}/classify; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


if __name__ == "__main__":
    main()
