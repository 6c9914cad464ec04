EMBED_PARTS = config["retrieval"]["embedder"]["parts"]
# What the vectors depend on (`parts` only splits the pool's embedding into jobs), as
# their meta.json records it.
EMBEDDER_SETTINGS = EmbedderConfig.from_dict(config["retrieval"]["embedder"]).recorded()
EMBED_SHELL = (
    "{PY:q} -m ssae_steps.retrieval.embed --params {params.cfg:q} --table {input.table} {params.part} "
    "--device {params.device} --out-vectors {output.vectors} --out-meta {output.meta} > {log} 2>&1"
)

# parts > 1: the pool's vectors come from the gather, every other corpus's from here.
ruleorder: gather_embedding_parts > embed_corpus


rule embed_corpus:
    input:
        table="results/corpora/{corpus}/docs.parquet",
    output:
        vectors="results/embeddings/{corpus}/vectors.npy",
        meta="results/embeddings/{corpus}/meta.json",
    wildcard_constraints:
        corpus="|".join(CORPORA),
    params:
        cfg=as_json(EMBEDDER_SETTINGS),
        part="",
        device=DEVICE,
        code=code_version("ssae_steps.retrieval.embed"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/embed_corpus/{corpus}.log",
    benchmark:
        "benchmarks/embed_corpus/{corpus}.tsv"
    shell:
        EMBED_SHELL


# With retrieval.embedder.parts > 1 the pool is embedded in parts (scatter), each a
# contiguous run of its documents, and gathered into one vectors file.
rule embed_corpus_part:
    input:
        table="results/corpora/{corpus}/docs.parquet",
    output:
        vectors="results/embeddings/{corpus}/parts/{part}-of-{parts}.npy",
        meta="results/embeddings/{corpus}/parts/{part}-of-{parts}.json",
    wildcard_constraints:
        corpus=POOL,
        part=r"\d+",
        parts=str(EMBED_PARTS),
    params:
        cfg=as_json(EMBEDDER_SETTINGS),
        part=lambda wc: f"--part {wc.part} {wc.parts}",
        device=DEVICE,
        code=code_version("ssae_steps.retrieval.embed"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/embed_corpus/{corpus}/part-{part}-of-{parts}.log",
    benchmark:
        "benchmarks/embed_corpus/{corpus}/part-{part}-of-{parts}.tsv"
    shell:
        EMBED_SHELL


rule gather_embedding_parts:
    input:
        metas=expand("results/embeddings/{{corpus}}/parts/{part}-of-{parts}.json", part=range(EMBED_PARTS), parts=EMBED_PARTS),
        vectors=expand("results/embeddings/{{corpus}}/parts/{part}-of-{parts}.npy", part=range(EMBED_PARTS), parts=EMBED_PARTS),
    output:
        vectors="results/embeddings/{corpus}/vectors.npy",
        meta="results/embeddings/{corpus}/meta.json",
    wildcard_constraints:
        corpus=POOL if EMBED_PARTS > 1 else "^$",
    params:
        code=code_version("ssae_steps.retrieval.embed_gather"),
    conda:
        ENV
    log:
        "logs/embed_corpus/{corpus}/gather.log",
    shell:
        "{PY:q} -m ssae_steps.retrieval.embed_gather --parts {input.metas} --out-vectors {output.vectors} "
        "--out-meta {output.meta} > {log} 2>&1"


rule build_index:
    input:
        vectors="results/embeddings/{corpus}/vectors.npy",
        meta="results/embeddings/{corpus}/meta.json",
    output:
        index="results/retrieval/index/{corpus}.faiss",
        meta="results/retrieval/index/{corpus}.json",
    wildcard_constraints:
        corpus="|".join(CORPORA),
    params:
        cfg=as_json(config["retrieval"]["index"]),
        seed=config["seed"],
        code=code_version("ssae_steps.retrieval.index"),
    conda:
        ENV
    log:
        "logs/build_index/{corpus}.log",
    benchmark:
        "benchmarks/build_index/{corpus}.tsv"
    shell:
        "{PY:q} -m ssae_steps.retrieval.index --params {params.cfg:q} --vectors {input.vectors} "
        "--meta {input.meta} --seed {params.seed} --out-index {output.index} --out-meta {output.meta} > {log} 2>&1"


def retrieval_inputs(strategy):
    inputs = {
        "seed": f"results/corpora/{SUBDOMAIN}/docs.parquet",
        "pool": f"results/corpora/{POOL}/docs.parquet",
        "model": "results/model/model.json",
    }
    if strategy == "dense":
        inputs |= {
            "pool_vectors": f"results/embeddings/{POOL}/vectors.npy",
            "pool_meta": f"results/embeddings/{POOL}/meta.json",
            "pool_index": f"results/retrieval/index/{POOL}.faiss",
            "seed_vectors": f"results/embeddings/{SUBDOMAIN}/vectors.npy",
            "seed_meta": f"results/embeddings/{SUBDOMAIN}/meta.json",
        }
    return inputs


def retrieval_params(strategy, budget_multiple=1.0):
    """Only the keys a strategy reads, so e.g. a new embedder reruns dense alone."""
    keys = ["subdomain", "pool", "token_budget", "include_seed"]
    if strategy in ("dense", "bm25"):
        keys.append("neighbours_per_seed")
    if strategy == "dense":
        keys += ["embedder", "index"]
    params = {k: RETRIEVAL[k] for k in keys}
    if "embedder" in params:
        params["embedder"] = EMBEDDER_SETTINGS
    params["token_budget"] = math.ceil(params["token_budget"] * budget_multiple)
    return as_json(params)


def dense_flags(strategy, input):
    if strategy != "dense":
        return ""
    return (
        f"--pool-vectors {input.pool_vectors} --pool-meta {input.pool_meta} "
        f"--pool-index {input.pool_index} --seed-vectors {input.seed_vectors} --seed-meta {input.seed_meta}"
    )


RETRIEVAL_SHELL = (
    "{PY:q} -m ssae_steps.retrieval.retrieve --strategy {params.strategy} --params {params.cfg:q} "
    "--seed {params.seed} --seed-table {input.seed} --pool-table {input.pool} "
    "--model-dir results/model/hf {params.dense} "
    "--out-table {output.table} --out-summary {output.summary} > {log} 2>&1"
)
# Strategies select_data writes; the TracIn ones come from rerank_tracin (tracin.smk).
DIRECT_STRATEGIES = [s for s in STRATEGIES if s not in TRACIN_STRATEGIES]


rule select_data:
    input:
        unpack(lambda wc: retrieval_inputs(wc.strategy)),
    output:
        table="results/retrieval/{subdomain}/{strategy}/docs.parquet",
        summary="results/retrieval/{subdomain}/{strategy}/summary.json",
    wildcard_constraints:
        subdomain=SUBDOMAIN,
        strategy="|".join(DIRECT_STRATEGIES) or "^$",
    params:
        strategy=lambda wc: wc.strategy,
        cfg=lambda wc: retrieval_params(wc.strategy),
        seed=config["seed"],
        dense=lambda wc, input: dense_flags(wc.strategy, input),
        code=code_version("ssae_steps.retrieval.retrieve"),
    conda:
        ENV
    log:
        "logs/select_data/{subdomain}/{strategy}.log",
    benchmark:
        "benchmarks/select_data/{subdomain}/{strategy}.tsv"
    shell:
        RETRIEVAL_SHELL


rule compare_selection:
    input:
        tables=expand("results/retrieval/{{subdomain}}/{strategy}/docs.parquet", strategy=STRATEGIES),
    output:
        md="results/retrieval/{subdomain}/comparison.md",
        json="results/retrieval/{subdomain}/comparison.json",
        plot=report(
            "results/retrieval/{subdomain}/comparison.png",
            caption="../report/retrieval_comparison.rst",
            category="1. Data",
        ),
    wildcard_constraints:
        subdomain=SUBDOMAIN,
    params:
        code=code_version("ssae_steps.retrieval.report"),
    conda:
        ENV
    log:
        "logs/compare_selection/{subdomain}.log",
    shell:
        "{PY:q} -m ssae_steps.retrieval.report --tables {input.tables} --subdomain {wildcards.subdomain} "
        "--out-md {output.md} --out-json {output.json} --out-plot {output.plot} > {log} 2>&1"
