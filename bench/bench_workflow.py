"""Wall time of the default pipeline's heaviest stages vs the bare operations under them.

Issue 18 ("Measure, do not time-test"). Each stage is the project's own stage function,
called in-process with the arguments its Snakemake rule passes through ``python -m
ssae_steps.X`` (the config is ``config.yaml`` with the schema's defaults filled in, as the
workflow validates it; torch gets ``--threads``, by default 2, as the rules from 4 cores
up). Each bare operation is the work the stage cannot avoid, timed in the same run on the
same inputs, just before its stage:

- ``cache_activations``: ``--tokens`` (20,000) tokens of general-pool training documents
  (the subdomains' held-out documents excluded, as the rule does), written to a temp
  folder. Bare: ``bench_activations.bare_forward``, the forward pass stopped after the
  hooked block over the same windows and batches (model load and tokenizing included on
  both sides). Units: tokens.
- ``train_sae``: the GSAE recipe (``training``: scratch, main k, seed 0, the TracIn
  snapshots the main GSAE keeps) for ``--train-steps`` (50) steps of ``batch_size`` (1024)
  rows of the cached general training set. Bare: TopK forward (the trainer's sparse
  backward), backward and Adam step on batches already in memory, as many steps; no
  reader, AuxK, dead-latent tracking, decoder projection or renormalisation, logging,
  checkpoint or snapshot. Units: steps.
- ``evaluate_sae``: the GSAE ``sae/general/k{k}/sae`` with the ``evaluate_sae`` rule's
  arguments (the evaluation keys it passes, both held-out sets, ``eval/tail_tokens.csv``,
  ``eval/token_types.csv``, seed, layer). This mirrors ``workflow/rules/evaluation.smk`` and
  ``evaluate.main`` and must follow them when they change. One setting differs by default:
  ``--loss-tokens`` (512) replaces ``evaluation.loss_tokens`` (tokens scored per set; 4096
  in the default config: ~10 minutes here); ``--loss-tokens 0`` keeps the config's, and is
  then the rule exactly. Units: scored tokens (both sets). Bare: the blocks after the
  hooked one (from its clean output, computed untimed, as the stage reads it from the clean
  scores), the 262k-token unembedding and cross-entropy over the same scored windows in
  the same batches, plus the SAE's TopK encode of every held-out row of both sets (which the stage
  reconstructs). As in the workflow, the stage reuses the clean model's scores of its
  windows, which the once-per-run ``eval_baselines`` job writes; the bench computes them
  for its windows first and prints that time on its own row. Its per-row work (reconstructing every held-out
  row, tail and token-type detection) does not shrink with fewer scored tokens, so the
  ratio at 512 is lower than at 4096.
- ``embed_corpus``: ``--docs`` (300) general-pool documents (a seeded sample) in a temp
  table. Bare: sentence-transformers ``encode`` of the same texts, model loaded and warm.
  Units: documents.

Ratio = stage units/s / bare units/s (= bare seconds / stage seconds): 1 means the stage
costs no more than its bare work; the rest is its overhead (loading, reading, writing,
bookkeeping). No targets, no repeats: one pass of each, stage after bare.

Inputs: the outputs of a default run (``snakemake --cores 2`` with the default config),
under ``--results``: at least ``model/hf``, ``corpora/*/docs.parquet``,
``activations/corpus/general/{train,heldout}/manifest.json`` and the subdomain's
``heldout``, ``sae/general/k32/sae``, ``eval/tail_tokens.csv`` and ``eval/token_types.csv``.
Everything it writes goes to a temp folder. About 5 minutes on 2 cores with the defaults:

    snakemake --cores 2
    python bench/bench_workflow.py --json workflow_bench.json

The last line is machine-readable: ``RESULT cache=.. train=.. eval=.. embed=..`` (ratios).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_activations import bare_forward  # noqa: E402

from ssae_steps.activations.cache import cache_activations, select_documents  # noqa: E402
from ssae_steps.activations.config import ActivationConfig  # noqa: E402
from ssae_steps.activations.reader import ActivationShardReader  # noqa: E402
from ssae_steps.activations.sets import load_activation_set  # noqa: E402
from ssae_steps.config import resolve_device, schema_errors  # noqa: E402
from ssae_steps.evals.config import EvaluationConfig  # noqa: E402
from ssae_steps.evals.evaluate import evaluate_baselines, evaluate_sae, load_heldout  # noqa: E402
from ssae_steps.evals.spliced_loss import final_hidden_from, save_clean_scores  # noqa: E402
from ssae_steps.model import load_model, padded_batch, residual_stream  # noqa: E402
from ssae_steps.retrieval.config import EmbedderConfig  # noqa: E402
from ssae_steps.retrieval.embed import embed_corpus, load_embedder  # noqa: E402
from ssae_steps.sae.autoencoder import SparseAutoencoder, load_sae  # noqa: E402
from ssae_steps.sae.config import TrainingPlan  # noqa: E402
from ssae_steps.sae.optim import effective_lr  # noqa: E402
from ssae_steps.sae.train import input_scale_from, train_sae  # noqa: E402


@dataclass
class Row:
    """One stage and its bare operation: seconds and work units of each."""

    stage: str
    seconds: float
    units: float
    unit: str
    bare: str
    bare_seconds: float
    bare_units: float

    @property
    def rate(self) -> float:
        return self.units / self.seconds

    @property
    def bare_rate(self) -> float:
        return self.bare_units / self.bare_seconds

    @property
    def ratio(self) -> float:
        return self.rate / self.bare_rate


@dataclass
class Run:
    """Resolved inputs of the default run under ``--results``."""

    results: Path
    config: dict[str, Any]
    device: str
    layer: int
    pool: str
    subdomain: str
    subdomains: list[str]

    def path(self, relative: str) -> Path:
        return self.results / relative

    @property
    def model_dir(self) -> Path:
        return self.path("model/hf")

    @property
    def pool_table(self) -> Path:
        return self.path(f"corpora/{self.pool}/docs.parquet")

    @property
    def exclusions(self) -> list[Path]:
        return [self.path(f"corpora/{name}/docs.parquet") for name in self.subdomains]

    def heldout_sets(self) -> dict[str, str]:
        """The rule's ``--sets``: general and subdomain held-out manifests."""
        return {
            "general": str(self.path(f"activations/corpus/{self.pool}/heldout/manifest.json")),
            "subdomain": str(self.path(f"activations/corpus/{self.subdomain}/heldout/manifest.json")),
        }


def load_config(path: Path) -> dict[str, Any]:
    """``config.yaml`` with the schema's defaults filled in, as the workflow validates it."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(path.read_text())
    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    problems = schema_errors(config, schema)
    if problems:
        sys.exit(f"{path}: invalid config:\n  " + "\n  ".join(problems))
    validate(config, schema=str(schema))
    return config


def resolve_run(results: Path, config: dict[str, Any]) -> Run:
    roles = {name: spec.get("role") for name, spec in config["corpora"].items()}
    pools = [n for n, r in roles.items() if r == "general"]
    subdomains = [n for n, r in roles.items() if r == "subdomain"]
    retrieval = config["retrieval"]
    return Run(
        results=results,
        config=config,
        device=resolve_device(config["device"]),
        layer=int(config["model"]["hook_layer"]),
        pool=retrieval.get("pool") or pools[0],
        subdomain=retrieval.get("subdomain") or subdomains[0],
        subdomains=subdomains,
    )


def check_inputs(run: Run, gsae: Path) -> None:
    needed = [
        run.model_dir / "config.json",
        run.pool_table,
        *run.exclusions,
        run.path(f"activations/corpus/{run.pool}/train/manifest.json"),
        *map(Path, run.heldout_sets().values()),
        gsae,
        run.path("eval/tail_tokens.csv"),
        run.path("eval/token_types.csv"),
    ]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        sys.exit("missing inputs of a default run (run `snakemake --cores 2` first):\n  " + "\n  ".join(missing))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, work: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    started = time.perf_counter()
    out = work()
    sync(device)
    return time.perf_counter() - started, out


# --- activation caching -----------------------------------------------------------------


def bench_cache(run: Run, tmp: Path, tokens: int) -> Row:
    settings = {k: v for k, v in run.config["activations"].items() if k != "parts"}
    cfg = ActivationConfig.from_dict({**settings, "max_train_tokens": tokens})
    _, texts, _ = select_documents(run.pool_table, "train", run.exclusions)
    load_model(run.model_dir)  # warm the page cache and the imports for both
    bare_s, bare_tokens = timed(run.device, lambda: bare_forward(run.model_dir, texts, cfg, run.layer))
    manifest = tmp / "activations" / "manifest.json"
    seconds, info = timed(
        run.device,
        lambda: cache_activations(
            cfg,
            run.model_dir,
            run.layer,
            run.pool_table,
            "train",
            manifest,
            exclude_heldout_of=run.exclusions,
            device=run.device,
            seed=run.config["seed"],
        ),
    )
    return Row("cache_activations", seconds, info["tokens"], "tokens", "truncated forward", bare_s, bare_tokens)


# --- SAE training -----------------------------------------------------------------------


def bare_train_steps(cfg: Any, manifest: Path, steps: int, device: str) -> float:
    """Seconds of ``steps`` bare TopK steps (forward, backward, Adam) on in-memory batches."""
    meta = json.loads(manifest.read_text())
    sae_cfg = copy.deepcopy(cfg.sae)
    sae_cfg.d_in = int(meta["d_model"])
    sae = SparseAutoencoder(sae_cfg, input_scale=input_scale_from(meta), seed=cfg.seed).to(device)
    reader = ActivationShardReader(manifest, cfg.batch_size, seed=cfg.seed, drop_last=True)
    batches = [x.to(device) for x in itertools.islice(reader, min(steps, 8))]
    optimizer = torch.optim.Adam(sae.parameters(), lr=effective_lr(cfg), fused=device in ("cpu", "cuda"))

    def loop() -> None:
        for x in itertools.islice(itertools.cycle(batches), steps):
            values, indices, _, _ = sae.topk_train(x)
            loss = (sae.decode_sparse(values, indices) - x).square().sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return timed(device, loop)[0]


def bench_train(run: Run, tmp: Path, steps: int) -> Row:
    plan = TrainingPlan.from_dict(run.config["training"])
    main_k = plan.shared.sae.k
    cfg = plan.run_config("gsae", "scratch", 0.0, main_k, 0)
    cfg.tokens = steps * cfg.batch_size
    manifest = run.path(f"activations/corpus/{run.pool}/train/manifest.json")
    bare_s = bare_train_steps(cfg, manifest, steps, run.device)
    seconds, summary = timed(
        run.device,
        lambda: train_sae(cfg, manifest, tmp / "sae", device=run.device, snapshots=plan.gsae.snapshots),
    )
    name = f"train_sae (batch {cfg.batch_size})"
    return Row(name, seconds, summary["steps"], "steps", "TopK step", bare_s, steps)


# --- evaluation ---------------------------------------------------------------------------


def eval_config(run: Run, loss_tokens: int | None) -> EvaluationConfig:
    """The keys the evaluate_sae rule passes (SAE_EVAL_KEYS), loss_tokens optionally replaced."""
    evaluation = run.config["evaluation"]
    keys = ("loss_tokens", "batch_size", "validation_fraction", "dense_threshold", "tail")
    params = {key: evaluation[key] for key in keys}
    if loss_tokens is not None:
        params["loss_tokens"] = loss_tokens
    return EvaluationConfig.from_dict(params)


def hooked_batches(
    model: Any, tokenizer: Any, windows: list[list[int]], batch_size: int, layer: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(input_ids, mask, block output)`` of the evaluation's batches (sorted by length,
    ``batch_size`` at a time): the hooked block's output is what an SAE evaluation reads
    from the clean scores instead of recomputing it."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(windows, key=len)
    out = []
    for start in range(0, len(order), batch_size):
        ids, mask = padded_batch(order[start : start + batch_size], tokenizer.bos_token_id, pad)
        ids, mask = ids.to(device), mask.to(device)
        out.append((ids, mask, residual_stream(model, ids, mask, layer)))
    return out


@torch.no_grad()
def bare_forward_after_hook(
    model: Any, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], layer: int, chunk: int = 128
) -> int:
    """The blocks after the hooked one, unembedding and next-token cross-entropy of
    :func:`hooked_batches`; returns tokens scored."""
    head = model.get_output_embeddings()
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    scored = 0
    for ids, mask, given in batches:
        hidden = final_hidden_from(model, layer, given, ids, mask)
        keep = mask[:, 1:].bool()
        rows, targets = hidden[:, :-1][keep], ids[:, 1:][keep]
        for s in range(0, len(rows), chunk):
            logits = head(rows[s : s + chunk]).float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            (logits.logsumexp(-1) - logits.gather(1, targets[s : s + chunk, None])[:, 0]).sum()
        scored += len(targets)
    return scored


def time_forward_after_hook(run: Run, windows: list[list[int]], batch_size: int) -> tuple[float, int]:
    """Seconds and tokens of :func:`bare_forward_after_hook` (model loading, the hooked
    block's outputs and a one-batch warm-up untimed)."""
    model, tokenizer = load_model(run.model_dir, run.device)
    batches = hooked_batches(model, tokenizer, windows, batch_size, run.layer)
    bare_forward_after_hook(model, batches[:1], run.layer)  # warm-up
    return timed(run.device, lambda: bare_forward_after_hook(model, batches, run.layer))


@torch.no_grad()
def bare_encode(sae: SparseAutoencoder, acts: np.ndarray, chunk: int = 4096) -> None:
    for start in range(0, len(acts), chunk):
        sae.topk(torch.from_numpy(acts[start : start + chunk]).to(sae.W_dec.device))


def bench_eval(run: Run, tmp: Path, gsae: Path, cfg: EvaluationConfig) -> list[Row]:
    """The evaluate_sae stage as its rule runs it, after the clean scores of its windows
    (what eval_baselines writes once per run; timed as its own row)."""
    sets = run.heldout_sets()
    seed = run.config["seed"]
    windows = [ids for name, path in sets.items() for _, ids in load_heldout(path, name, cfg, seed).windows]
    acts = np.concatenate([load_activation_set(path)["activation"] for path in sets.values()])
    forward_s, scored = time_forward_after_hook(run, windows, cfg.batch_size)
    sae = load_sae(gsae).to(run.device)
    encode_s = timed(run.device, lambda: bare_encode(sae, acts))[0]
    (tmp / "eval").mkdir()
    clean_path = tmp / "eval" / "clean_scores.safetensors"

    def baselines() -> None:
        cache = evaluate_baselines(cfg, sets, run.model_dir, run.layer, run.device, seed)[1]
        save_clean_scores(clean_path, cache)

    baselines_s = timed(run.device, baselines)[0]
    seconds, result = timed(
        run.device,
        lambda: evaluate_sae(
            cfg,
            gsae,
            sets,
            run.path("eval/tail_tokens.csv"),
            run.model_dir,
            run.layer,
            run.device,
            tmp / "eval" / "run.per_doc.parquet",
            seed,
            run.path("eval/token_types.csv"),
            clean_path,
        ),
    )
    stage_tokens = sum(s["loss_tokens"] for s in result["sets"].values())
    if stage_tokens != scored:
        print(f"warning: evaluate_sae scored {stage_tokens} tokens, the bare forward {scored}", file=sys.stderr)
    bare = "forward after the hook + encode"
    return [
        Row("evaluate_sae (GSAE)", seconds, stage_tokens, "scored tokens", bare, forward_s + encode_s, scored),
        Row("  bare: blocks after the hook + unembedding", forward_s, scored, "scored tokens", "", forward_s, scored),
        Row("  bare: SAE TopK encode", encode_s, len(acts), "held-out rows", "", encode_s, len(acts)),
        Row("  eval_baselines (once per run)", baselines_s, scored, "scored tokens", "", baselines_s, scored),
    ]


# --- embedding ----------------------------------------------------------------------------


def time_bare_encode(cfg: EmbedderConfig, texts: list[str], device: str) -> float:
    """Seconds of sentence-transformers ``encode`` of ``texts``, model loaded and warmed up."""
    model = load_embedder(cfg, device)
    model.encode(texts[: cfg.batch_size], batch_size=cfg.batch_size)  # warm-up
    return timed(device, lambda: model.encode(texts, batch_size=cfg.batch_size, normalize_embeddings=True))[0]


def bench_embed(run: Run, tmp: Path, docs: int) -> Row:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(run.pool_table, columns=["doc_id", "text"])
    picked = np.sort(np.random.default_rng(0).choice(len(table), min(docs, len(table)), replace=False))
    sample = table.take(pa.array(picked))
    pq.write_table(sample, tmp / "embed_docs.parquet")
    texts = sample["text"].to_pylist()
    cfg = EmbedderConfig.from_dict(run.config["retrieval"]["embedder"])
    bare_s = time_bare_encode(cfg, texts, run.device)
    seconds, meta = timed(
        run.device,
        lambda: embed_corpus(cfg, tmp / "embed_docs.parquet", tmp / "vectors.npy", tmp / "meta.json", run.device),
    )
    return Row("embed_corpus", seconds, meta["documents"], "docs", "sentence-transformers encode", bare_s, len(texts))


# --- report -------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    width = max(len(r.stage) for r in rows) + 2
    header = f"{'stage':<{width}}{'wall s':>9}{'work':>10}  {'unit':<14}{'units/s':>10}{'bare units/s':>14}{'ratio':>8}"
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        bare = f"{r.bare_rate:>14,.1f}{r.ratio:>8.2f}" if r.bare else ""
        print(f"{r.stage:<{width}}{r.seconds:>9.1f}{r.units:>10,.0f}  {r.unit:<14}{r.rate:>10,.1f}{bare}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="a default run's results folder")
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens cached by cache_activations")
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument(
        "--loss-tokens", type=int, default=512, help="evaluation.loss_tokens (per set); 0: the config's (the rule)"
    )
    parser.add_argument("--docs", type=int, default=300, help="documents embedded by embed_corpus")
    parser.add_argument(
        "--stages", default="cache,train,eval,embed", help="comma-separated subset of cache, train, eval, embed"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the rules': 2 from 4 cores up, 1 on 2)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args()
    stages = args.stages.split(",")
    if not set(stages) <= {"cache", "train", "eval", "embed"}:
        parser.error(f"--stages: unknown {sorted(set(stages) - {'cache', 'train', 'eval', 'embed'})}")

    torch.set_num_threads(args.threads)
    run = resolve_run(args.results, load_config(args.config))
    main_k = TrainingPlan.from_dict(run.config["training"]).shared.sae.k
    gsae = run.path(f"sae/general/k{main_k}/sae")
    check_inputs(run, gsae)
    eval_cfg = eval_config(run, args.loss_tokens or None)
    print(f"results: {args.results}  device: {run.device}  torch {torch.__version__}, {args.threads} threads")
    print(
        f"cache {args.tokens:,} tokens; train {args.train_steps} steps; evaluate {gsae} "
        f"({eval_cfg.loss_tokens:,} loss tokens per set); embed {args.docs} docs",
        flush=True,
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench_workflow_") as tmp_name:
        tmp = Path(tmp_name)
        for stage in stages:
            print(f"--- {stage}", flush=True)
            if stage == "cache":
                rows.append(bench_cache(run, tmp, args.tokens))
            elif stage == "train":
                rows.append(bench_train(run, tmp, args.train_steps))
            elif stage == "eval":
                rows += bench_eval(run, tmp, gsae, eval_cfg)
            else:
                rows.append(bench_embed(run, tmp, args.docs))
    print_table(rows)
    ratios = {key: r.ratio for key, r in zip(stages, (r for r in rows if r.bare), strict=True)}
    if args.json:
        record = [{**r.__dict__, "rate": r.rate, "bare_rate": r.bare_rate, "ratio": r.ratio} for r in rows]
        args.json.write_text(json.dumps({"rows": record, "ratios": ratios}, indent=1))
    print("RESULT " + " ".join(f"{key}={value:.2f}" for key, value in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
