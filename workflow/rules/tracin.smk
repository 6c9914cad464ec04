# TracIn strategies (dense_tracin, bm25_tracin): the base strategy retrieves
# retrieval.tracin.candidate_multiple x the budget, the candidates' activations are cached,
# and TracIn under the first seed's GSAE snapshots reranks them into the budget. A changed
# GSAE reruns these rules (and what trains on their selections), nothing else upstream.

TRACIN = [s for s in STRATEGIES if s in TRACIN_STRATEGIES]
TRACIN_CFG = RETRIEVAL["tracin"]
GSAE_RUN = f"results/sae/general/k{MAIN_K}"


rule retrieve_tracin_candidates:
    input:
        unpack(lambda wc: retrieval_inputs(wc.base)),
    output:
        table="results/retrieval/{subdomain}/tracin_candidates/{base}/docs.parquet",
        summary="results/retrieval/{subdomain}/tracin_candidates/{base}/summary.json",
    wildcard_constraints:
        subdomain=SUBDOMAIN,
        base="dense|bm25",
    params:
        strategy=lambda wc: wc.base,
        cfg=lambda wc: retrieval_params(wc.base, TRACIN_CFG["candidate_multiple"]),
        seed=config["seed"],
        dense=lambda wc, input: dense_flags(wc.base, input),
        code=code_version("ssae_steps.retrieval.retrieve"),
    conda:
        ENV
    log:
        "logs/retrieve_tracin_candidates/{subdomain}/{base}.log",
    benchmark:
        "benchmarks/select_data/{subdomain}/tracin_candidates_{base}.tsv"
    shell:
        RETRIEVAL_SHELL


rule cache_candidate_activations:
    input:
        table="results/retrieval/{subdomain}/tracin_candidates/{base}/docs.parquet",
        model="results/model/model.json",
    output:
        manifest="results/activations/tracin_candidates/{subdomain}/{base}/manifest.json",
    wildcard_constraints:
        subdomain=SUBDOMAIN,
        base="dense|bm25",
    params:
        # Every candidate is scored: no token cap.
        cfg=as_json({**ACTIVATION_SETTINGS, "max_train_tokens": None}),
        scope="--split train",
        hook_layer=config["model"]["hook_layer"],
        seed=config["seed"],
        device=DEVICE,
        code=code_version("ssae_steps.activations.cache"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/cache_activations/tracin_candidates/{subdomain}/{base}.log",
    benchmark:
        "benchmarks/cache_activations/tracin_candidates/{subdomain}/{base}.tsv"
    shell:
        CACHE_SHELL


rule rerank_tracin:
    input:
        candidates="results/retrieval/{subdomain}/tracin_candidates/{base}/docs.parquet",
        activations="results/activations/tracin_candidates/{subdomain}/{base}/manifest.json",
        gsae=f"{GSAE_RUN}/summary.json",
        snapshots=f"{GSAE_RUN}/snapshots",
    output:
        table="results/retrieval/{subdomain}/{base}_tracin/docs.parquet",
        summary="results/retrieval/{subdomain}/{base}_tracin/summary.json",
    wildcard_constraints:
        subdomain=SUBDOMAIN,
        base="dense|bm25",
    params:
        cfg=as_json(TRACIN_CFG),
        budget=RETRIEVAL["token_budget"],
        gsae=GSAE_RUN,
        code=code_version("ssae_steps.retrieval.tracin"),
    threads: JOB_THREADS
    resources:
        gpu=0,
    conda:
        ENV
    log:
        "logs/rerank_tracin/{subdomain}/{base}.log",
    benchmark:
        "benchmarks/select_data/{subdomain}/{base}_tracin.tsv"
    shell:
        "{PY:q} -m ssae_steps.retrieval.tracin --strategy {wildcards.base}_tracin --params {params.cfg:q} "
        "--token-budget {params.budget} --candidates {input.candidates} --activations {input.activations} "
        "--gsae {params.gsae} --threads {threads} --out-table {output.table} --out-summary {output.summary} > {log} 2>&1"
