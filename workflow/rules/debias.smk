# Debiasing case study (SHIFT): labelled biographies, biography SSAEs finetuned from the
# GSAE of each training seed, and gender-latent ablation for a profession probe, GSAE vs SSAEs.
#   debias/bios.parquet                         biographies with profession, gender and splits
#   debias/finetune/TEXT.parquet, TEXT.json     the finetuning text of each SSAE below
#   sae/bios/ssae[-sS]                          biography SSAE: training biographies + their copies
#   sae/bios_real/ssae[-sS]                     biography SSAE of the "real" variant: real articles only
#   sae/swap/ssae[-sS]                          swap control: non-biography pool text + its swapped copies
#   debias/summary.md, table1.csv, results.csv  Table-1 layout with intervals, every N and seed
#   debias/comparisons.csv                      the biography SSAE vs every other SAE of its variant
#   debias/sparse_probing.csv, worst_group.png  k-sparse probing, the plot
# With no counterfactual copies (local and hub data by default) the biography SSAE reads
# real articles only, and neither bios_real nor the swap control is trained.

from types import SimpleNamespace

DEBIAS = config["debias"]
DEBIAS_CONFIG = DebiasConfig.from_dict({k: v for k, v in DEBIAS.items() if k != "enabled"})
BIOS_COPIES = DEBIAS_CONFIG.data.with_copies
# The finetuning texts (ssae_steps/debias/finetune_text.py) and the SSAE named after each.
# Without copies the biography SSAE reads real articles only, and there are no swapped pairs
# for the control to match.
FINETUNE_TEXTS = ["bios"]
if BIOS_COPIES:
    FINETUNE_TEXTS += ["bios_real"] + (["swap"] if DEBIAS_CONFIG.swap_control else [])
if SUBDOMAIN in ("bios", "bios_real", "swap"):
    raise WorkflowError(f"invalid config: retrieval.subdomain: {SUBDOMAIN!r} is the name of a debiasing SSAE's text")


def debias_saes():
    """``(name, seed) -> run dir``: per training seed the GSAE, the SSAE of each finetuning
    text, and the main subdomain SSAE as an off-domain control (where that seed trained it)."""
    ssae = TRAINING_PLAN.ssae
    control_seeds = SWEEP_STRATEGY in SEED_STRATEGIES and max(ssae.tilts) == ssae.tilts[0]
    runs = {}
    for seed in SEEDS:
        tag = seed_tag(seed)
        runs[("gsae", seed)] = f"results/sae/general/k{MAIN_K}{gsae_tag(seed)}"
        for text in FINETUNE_TEXTS:
            runs[(f"ssae_{text}", seed)] = f"results/sae/{text}/ssae{tag}"
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


def finetune_text_inputs(wildcards):
    inputs = {"bios": "results/debias/bios.parquet"}
    if wildcards.text == "swap":
        # The pool's training documents, less what a subdomain holds out (as for the GSAE).
        inputs["pool"] = f"results/corpora/{POOL}/docs.parquet"
        inputs["exclude"] = activation_exclusions(SimpleNamespace(corpus=POOL, split="train"))
    return inputs


def finetune_text_scope(wildcards, input):
    if wildcards.text != "swap":
        return ""
    exclude = f" --exclude-heldout-of {' '.join(input.exclude)}" if input.exclude else ""
    return f"--pool {input.pool}{exclude}"


rule finetune_text:
    input:
        unpack(finetune_text_inputs),
    output:
        table="results/debias/finetune/{text}.parquet",
        summary="results/debias/finetune/{text}.json",
    wildcard_constraints:
        text="bios|bios_real|swap",
    params:
        scope=finetune_text_scope,
        code=code_version("ssae_steps.debias.finetune_text"),
    conda:
        ENV
    log:
        "logs/debias/finetune_text/{text}.log",
    benchmark:
        "benchmarks/debias/finetune_text/{text}.tsv"
    shell:
        "{PY:q} -m ssae_steps.debias.finetune_text --text {wildcards.text} --bios {input.bios} {params.scope} "
        "--out {output.table} --summary {output.summary} > {log} 2>&1"


rule cache_bios_activations:
    input:
        table="results/debias/finetune/{text}.parquet",
        model="results/model/model.json",
    output:
        manifest="results/activations/debias/{text}/manifest.json",
    wildcard_constraints:
        text="bios|bios_real|swap",
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
        "logs/cache_activations/debias/{text}.log",
    benchmark:
        "benchmarks/cache_activations/debias/{text}.tsv"
    shell:
        CACHE_SHELL


# One recipe for every finetuning text: the biography SSAEs and the swap control differ in
# their text only.
rule train_bios_ssae:
    input:
        activations="results/activations/debias/{text}/manifest.json",
        gsae=lambda wc: f"results/sae/general/k{MAIN_K}{gsae_tag(seed_of(wc.seedtag))}/summary.json",
    output:
        sae=directory("results/sae/{text}/ssae{seedtag}/sae"),
        log_csv="results/sae/{text}/ssae{seedtag}/train_log.csv",
        summary="results/sae/{text}/ssae{seedtag}/summary.json",
    wildcard_constraints:
        text="bios|bios_real|swap",
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
        "logs/train_sae/{text}{seedtag}.log",
    benchmark:
        "benchmarks/train_sae/{text}{seedtag}.tsv"
    shell:
        "{PY:q} -m ssae_steps.sae.train --params {params.cfg:q} --role ssae --init finetune "
        "--tilt {params.tilt} --k {MAIN_K} --seed {params.seed} --manifest {input.activations} "
        "--init-from {params.gsae} --out-dir results/sae/{wildcards.text}/ssae{wildcards.seedtag} "
        "--device {params.device} --threads {threads} > {log} 2>&1"


rule debias:
    input:
        table="results/debias/bios.parquet",
        saes=lambda wc: [f"{d}/summary.json" for d in debias_saes().values()],
        texts=expand("results/debias/finetune/{text}.json", text=FINETUNE_TEXTS),
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
        texts=" ".join(f"ssae_{text}=results/debias/finetune/{text}.json" for text in FINETUNE_TEXTS),
        hook_layer=config["model"]["hook_layer"],
        context_length=config["activations"]["context_length"],
        seed=config["seed"],
        device=DEVICE,
        primary=as_json(PRIMARY),
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
        "--training-text {params.texts} --seed {params.seed} --out-dir results/debias --device {params.device} "
        "--threads {threads} --primary {params.primary:q} > {log} 2>&1"
