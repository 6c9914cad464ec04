# Debiasing case study (SHIFT): labelled biographies, a biography SSAE finetuned from the
# GSAE of each training seed, and gender-latent ablation for a profession probe, GSAE vs SSAEs.
#   debias/bios.parquet                         biographies with profession, gender and splits
#   sae/bios/ssae[-sS]                          the biography SSAE of each seed
#   debias/summary.md, table1.csv, results.csv  Table-1 layout with intervals, every N and seed
#   debias/comparisons.csv                      biography SSAE vs GSAE and vs the off-domain SSAE
#   debias/sparse_probing.csv, worst_group.png  k-sparse probing, the plot

DEBIAS = config["debias"]


def debias_saes():
    """``(name, seed) -> run dir``: per training seed the GSAE, the biography SSAE, and the
    main subdomain SSAE as an off-domain control (where that seed trained it)."""
    ssae = TRAINING_PLAN.ssae
    control_seeds = SWEEP_STRATEGY in SEED_STRATEGIES and max(ssae.tilts) == ssae.tilts[0]
    runs = {}
    for seed in SEEDS:
        tag = seed_tag(seed)
        runs[("gsae", seed)] = f"results/sae/general/k{MAIN_K}{gsae_tag(seed)}"
        runs[("ssae_bios", seed)] = f"results/sae/bios/ssae{tag}"
        if not tag or control_seeds:
            runs[(f"ssae_{SUBDOMAIN}", seed)] = main_ssae_dir() + tag
    return runs


rule build_bios:
    output:
        "results/debias/bios.parquet",
    params:
        cfg=as_json(DEBIAS["data"]),
        content=content_digest(DEBIAS["data"]["path"]) if DEBIAS["data"].get("path") else "",
        seed=config["seed"],
        code=code_version("ssae_steps.debias.bios"),
    conda:
        ENV
    log:
        "logs/debias/build_bios.log",
    shell:
        "{PY:q} -m ssae_steps.debias.bios --params {params.cfg:q} --seed {params.seed} --out {output} > {log} 2>&1"


rule cache_bios_activations:
    input:
        table="results/debias/bios.parquet",
        model="results/model/model.json",
    output:
        manifest="results/activations/debias/bios/manifest.json",
    params:
        cfg=ACTIVATION_CFG,
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
        "logs/cache_activations/debias/bios.log",
    benchmark:
        "benchmarks/cache_activations/debias/bios.tsv"
    shell:
        CACHE_SHELL


rule train_bios_ssae:
    input:
        activations="results/activations/debias/bios/manifest.json",
        gsae=lambda wc: f"results/sae/general/k{MAIN_K}{gsae_tag(seed_of(wc.seedtag))}/summary.json",
    output:
        sae=directory("results/sae/bios/ssae{seedtag}/sae"),
        log_csv="results/sae/bios/ssae{seedtag}/train_log.csv",
        summary="results/sae/bios/ssae{seedtag}/summary.json",
    wildcard_constraints:
        seedtag=SEED_TAG,
    params:
        cfg=as_json(SSAE_PARAMS),
        seed=lambda wc: seed_of(wc.seedtag),
        gsae=lambda wc: f"results/sae/general/k{MAIN_K}{gsae_tag(seed_of(wc.seedtag))}/sae",
        tilt=DEBIAS["ssae_tilt"],
        device=DEVICE,
        code=code_version("ssae_steps.sae.train"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/train_sae/bios{seedtag}.log",
    benchmark:
        "benchmarks/train_sae/bios{seedtag}.tsv"
    shell:
        "{PY:q} -m ssae_steps.sae.train --params {params.cfg:q} --role ssae --init finetune "
        "--tilt {params.tilt} --k {MAIN_K} --seed {params.seed} --manifest {input.activations} "
        "--init-from {params.gsae} --out-dir results/sae/bios/ssae{wildcards.seedtag} "
        "--device {params.device} --threads {threads} > {log} 2>&1"


rule debias:
    input:
        table="results/debias/bios.parquet",
        saes=lambda wc: [f"{d}/summary.json" for d in debias_saes().values()],
        model="results/model/model.json",
    output:
        table="results/debias/results.csv",
        table1="results/debias/table1.csv",
        comparisons="results/debias/comparisons.csv",
        sparse="results/debias/sparse_probing.csv",
        plot=report("results/debias/worst_group.png", caption="../report/debias.rst", category="4. Debiasing"),
        summary=report("results/debias/summary.md", caption="../report/debias.rst", category="4. Debiasing"),
    params:
        cfg=as_json({k: v for k, v in DEBIAS.items() if k != "enabled"}),
        saes=lambda wc: " ".join(f"{name}:{seed}={d}/sae" for (name, seed), d in debias_saes().items()),
        hook_layer=config["model"]["hook_layer"],
        context_length=config["activations"]["context_length"],
        seed=config["seed"],
        device=DEVICE,
        code=code_version("ssae_steps.debias.case_study"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/debias/debias.log",
    benchmark:
        "benchmarks/debias/debias.tsv"
    shell:
        "{PY:q} -m ssae_steps.debias.case_study --params {params.cfg:q} --table {input.table} --saes {params.saes} "
        "--model-dir results/model/hf --hook-layer {params.hook_layer} --context-length {params.context_length} "
        "--seed {params.seed} --out-dir results/debias --device {params.device} --threads {threads} > {log} 2>&1"
