"""The usual Python way to serve the model: FastAPI + uvicorn around ONNX Runtime.

The peer of `densenet serve` in `make bench-serve` (tools/bench_serve.py starts it with
`uvicorn fastapi_ort_server:app`). `POST /v1/classify` takes one image as the body and answers the
five most probable classes, one forward pass per request (no batching across requests).
DENSENET_ONNX names the ONNX file (built by tools/bench_compare.py's `build_onnx` from the same
weights); decoding and preprocessing match the engine's for a 32×32 image: RGB, [0, 1], the
CIFAR-100 mean and std.
"""

from __future__ import annotations

import io
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

MEAN = np.array([0.5071, 0.4865, 0.4409], dtype=np.float32)
STD = np.array([0.2673, 0.2564, 0.2762], dtype=np.float32)

opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "2"))
session = ort.InferenceSession(os.environ["DENSENET_ONNX"], opts, providers=["CPUExecutionProvider"])
app = FastAPI()


def predict(body: bytes) -> list[dict]:
    try:
        image = Image.open(io.BytesIO(body)).convert("RGB")
    except Exception as e:  # any decoder failure is the client's bad image
        raise HTTPException(status_code=400, detail=f"body: {e}") from e
    if image.size != (32, 32):
        image = image.resize((32, 32), Image.BILINEAR)
    x = ((np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]
    logits = session.run(None, {"input": np.ascontiguousarray(x)})[0][0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-p)[:5]
    return [{"file": None, "top_k": [{"index": int(i), "probability": float(p[i])} for i in top]}]


@app.post("/v1/classify")
async def classify(request: Request) -> list[dict]:
    body = await request.body()
    return await run_in_threadpool(predict, body)


@app.get("/v2/health/ready")
async def ready() -> dict:
    return {"ready": True}
