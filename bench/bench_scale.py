"""Throughput at a real model's size, for README's "Scaling up" numbers.

Measures, on one device, with a model of Gemma 2 2B's shape (random weights: the cost of a
forward pass does not depend on their values; no download needed):

1. ``forward``: our caching forward pass (``model.residual_stream``: the blocks up to the
   hooked one, no LM head) in tokens/s, per model dtype;
2. ``host``: what caching does with each batch on the host after the copy to CPU memory -
   ``ShardWriter`` (statistics, float16 cast, Arrow IPC shards with their BLAKE3, written
   to local disk) fed float32 rows in forward-batch chunks - in tokens/s, and bytes per
   stored token;
3. ``train_step``: our TopK training step (``sae.objective.step_losses``, backward, decoder
   gradient projection, Adam, decoder renormalisation) on batches already on the device,
   in tokens/s, per dictionary width;
4. ``reader``: ``ActivationShardReader`` streaming a float16 set from local disk (shuffled,
   as training reads it, onto ``--device``: pinned host buffers and asynchronous copies on
   CUDA) in tokens/s: the rate a cached-set training run cannot exceed.

    python bench/bench_scale.py --device cuda --out scale.json

Prints one JSON object; the numbers are the device's and its host's, nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ssae_steps.activations.writer import ShardWriter  # noqa: E402
from ssae_steps.model import residual_stream  # noqa: E402
from ssae_steps.sae.autoencoder import SparseAutoencoder  # noqa: E402
from ssae_steps.sae.config import TrainConfig
from ssae_steps.sae.objective import step_losses
from ssae_steps.sae.optim import make_optimizer, remove_parallel_decoder_grad

GEMMA2_2B = dict(
    hidden_size=2304,
    intermediate_size=9216,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    vocab_size=256000,
)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def forward(device: str, hook_layer: int, batch: int, context: int, dtype: str, repeats: int) -> dict:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(**GEMMA2_2B, num_hidden_layers=hook_layer + 1)
    with torch.device(device):
        model = Gemma2ForCausalLM(config).to(getattr(torch, dtype)).eval()
    ids = torch.randint(0, config.vocab_size, (batch, context), device=device)
    mask = torch.ones_like(ids)
    seconds = timed(lambda: residual_stream(model, ids, mask, hook_layer), device, repeats)
    out = residual_stream(model, ids, mask, hook_layer)
    host = timed(lambda: out.float().cpu().numpy(), device, repeats)
    model.to("meta")  # free the device's memory before the next dtype
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        "dtype": dtype,
        "blocks": hook_layer + 1,
        "batch": batch,
        "context": context,
        "tokens_per_second": batch * context / seconds,
        "copy_to_host_tokens_per_second": batch * context / host,
    }


def _write_set(d_model: int, rows: int, root: Path, chunk: int = 16 * 1023) -> tuple[Path, float]:
    """A float16 set of ``rows`` random rows written by ``ShardWriter`` from float32 chunks
    (as ``cache_activations`` does); its manifest and the seconds the writer took."""
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((rows, d_model), dtype=np.float32)
    ids = [f"doc-{i // 1023}" for i in range(rows)]
    positions = (np.arange(rows) % 1023).astype(np.int32)
    tokens = np.zeros(rows, dtype=np.int32)
    start = time.perf_counter()
    with ShardWriter(root / "shards", "bench", d_model, "float16", 65536) as writer:
        for s in range(0, rows, chunk):
            writer.add(ids[s : s + chunk], positions[s : s + chunk], tokens[s : s + chunk], acts[s : s + chunk])
        shards = writer.close()
    seconds = time.perf_counter() - start
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"d_model": d_model, "tokens": rows, "shards": shards, "run_key": "bench"}))
    return manifest, seconds


def host_shards(d_model: int, rows: int, directory: Path) -> dict:
    manifest, seconds = _write_set(d_model, rows, directory / "host")
    size = sum(p.stat().st_size for p in (directory / "host" / "shards").glob("*.arrow"))
    return {"rows": rows, "tokens_per_second": rows / seconds, "bytes_per_token": size / rows}


def train_steps(device: str, d_in: int, d_sae: int, k: int, batch: int, steps: int) -> dict:
    cfg = TrainConfig.from_dict({"sae": {"d_sae": d_sae, "k": k, "d_in": d_in}, "batch_size": batch})
    cfg.sae.d_in = d_in
    sae = SparseAutoencoder(cfg.sae, input_scale=1.0).to(device)
    optimizer = make_optimizer(cfg, sae, 1e-4)
    tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    offset = torch.randn(d_in, device=device) * 3
    data = [torch.randn(batch, d_in, device=device) + offset for _ in range(8)]
    state = {"i": 0}

    def step() -> None:
        x = data[state["i"] % len(data)]
        state["i"] += 1
        loss, _, fired = step_losses(sae, x, cfg, tokens_since_fired)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        remove_parallel_decoder_grad(sae.W_dec)
        optimizer.step()
        sae.normalize_decoder()
        tokens_since_fired.add_(batch)
        tokens_since_fired[fired] = 0

    seconds = timed(step, device, steps, warmup=3)
    return {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch, "tokens_per_second": batch / seconds}


def reader(d_model: int, rows: int, batch: int, directory: Path, device: str) -> dict:
    from ssae_steps.activations.reader import ActivationShardReader

    manifest, _ = _write_set(d_model, rows, directory / "set")
    start = time.perf_counter()
    stream = ActivationShardReader(manifest, batch, shuffle=True, device=device)
    seen = 0
    for x in stream:
        seen += len(x)
    _sync(device)
    return {"rows": seen, "batch": batch, "device": device, "tokens_per_second": seen / (time.perf_counter() - start)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--hook-layer", type=int, default=12, help="0-based block whose output is cached")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--widths", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=4096)
    parser.add_argument("--reader-tokens", type=int, default=262144)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    d_model = GEMMA2_2B["hidden_size"]
    result: dict = {"device": args.device, "model": "Gemma 2 2B shape (random weights)", "d_model": d_model}
    if args.device.startswith("cuda"):
        result["device_name"] = torch.cuda.get_device_name()
    result["forward"] = [
        forward(args.device, args.hook_layer, args.batch, args.context, d, args.repeats) for d in args.dtypes
    ]
    print(json.dumps(result["forward"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result["host"] = host_shards(d_model, 4 * 65536, Path(tmp))
        print(json.dumps(result["host"]), flush=True)
        result["reader"] = reader(d_model, args.reader_tokens, args.train_batch, Path(tmp), args.device)
        print(json.dumps(result["reader"]), flush=True)
    result["train_step"] = [
        train_steps(args.device, d_model, w, args.k, args.train_batch, args.repeats * 2) for w in args.widths
    ]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
