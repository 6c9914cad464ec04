# Evaluation of every SAE on the held-out general and subdomain activation sets:
#   eval/tail_tokens.csv          the subdomain's tail concepts
#   eval/token_types.csv          every subdomain token type to evaluate (chosen on the
#                                 validation documents) with its general-pool frequency
#   eval/baselines.json           clean and zero-ablation loss per set
#   eval/clean_scores.safetensors the clean model's scores of the scored windows, which every
#                                 SAE's evaluation reuses (ssae_steps/evals/spliced_loss.py)
#   eval/runs/RUN.json            one SAE's metrics on the test part of each set (RUN = its
#                                 directory under results/sae), RUN.per_doc.parquet its
#                                 per-document sums for the bootstrap
#   eval/summary.md, metrics.csv  the overview (intervals over test documents and seeds,
#                                 metrics_by_seed.csv, paired comparisons.csv), with plots

EVAL_SETS = {
    "general": f"results/activations/corpus/{POOL}/heldout/manifest.json",
    "subdomain": f"results/activations/corpus/{SUBDOMAIN}/heldout/manifest.json",
}
# Each rule gets only the keys it reads, so e.g. a new tail threshold keeps the baselines.
EVAL = config["evaluation"]
# The validation/test split and the scored windows depend on loss_tokens, batch_size and
# validation_fraction (and the top-level seed); the bootstrap only on bootstrap_samples;
# the token types and tail concepts on evaluation.tail and validation_fraction.
LOSS_KEYS = {key: EVAL[key] for key in ("loss_tokens", "batch_size", "validation_fraction")}
SAE_EVAL_KEYS = {**LOSS_KEYS, "dense_threshold": EVAL["dense_threshold"], "tail": EVAL["tail"]}
SHOW_KEYS = {key: EVAL[key] for key in ("top_latents", "contexts_per_latent")}
EVAL_SET_ARGS = " ".join(f"{name}={path}" for name, path in EVAL_SETS.items())
# Token frequencies of the subdomain come from its seed documents' activations.
SEED_ACTIVATIONS = (
    f"results/activations/selected/{SUBDOMAIN}/seed/manifest.json"
    if "seed" in STRATEGIES
    else f"results/activations/corpus/{SUBDOMAIN}/train/manifest.json"
)


# The comparisons stated in advance (evaluation.primary), with the run names the reports
# use; every report gets the whole family, so each adjusts for the run's number of them.
def _primary_family():
    ssae = TRAINING_PLAN.ssae
    recipe = ssae_recipe(ssae.inits[0], ssae.tilts[0], MAIN_K)
    term_runs = None
    if config["term_study"]["enabled"] and max(TERM_PLAN.tilts) > 0:
        term_runs = tuple(
            ssae_run(SWEEP_STRATEGY, ssae_recipe("finetune", t, MAIN_K)) for t in (max(TERM_PLAN.tilts), 0.0)
        )
    try:
        return resolve_primary(
            EVALUATION_PLAN.primary,
            strategies=STRATEGIES,
            ssae_run_of={s: ssae_run(s, recipe) for s in STRATEGIES},
            gsae_run=gsae_run(MAIN_K),
            term_runs=term_runs,
            debias=config["debias"]["enabled"],
        )
    except ConfigError as exc:
        raise WorkflowError(f"invalid config: {exc}")


PRIMARY = _primary_family()


def eval_json(sae_dir):
    return "results/eval/runs/" + sae_dir.removeprefix("results/sae/") + ".json"


def main_ssae_dir():
    """The SSAE shown latent by latent: dense retrieval, first init, largest tilt, main k."""
    ssae = TRAINING_PLAN.ssae
    run = ssae_recipe(ssae.inits[0], max(ssae.tilts), MAIN_K)
    return f"results/sae/{SUBDOMAIN}/{SWEEP_STRATEGY}/{run}"


def pareto_curves():
    ssae = TRAINING_PLAN.ssae
    ks = sorted({MAIN_K, *TRAINING_PLAN.k_sweep})
    run = ssae_recipe(ssae.inits[0], ssae.tilts[0])
    return {
        "GSAE": [gsae_run(k) for k in ks],
        f"SSAE {SWEEP_STRATEGY}/{run}": [ssae_run(SWEEP_STRATEGY, ssae_recipe(ssae.inits[0], ssae.tilts[0], k)) for k in ks],
    }


rule tail_concepts:
    input:
        subdomain=SEED_ACTIVATIONS,
        general=f"results/activations/corpus/{POOL}/train/manifest.json",
        heldout=EVAL_SETS["subdomain"],
        model="results/model/model.json",
    output:
        tail="results/eval/tail_tokens.csv",
        types="results/eval/token_types.csv",
    params:
        cfg=as_json(EVAL["tail"]),
        # Types and tail concepts are counted on the validation documents only.
        validation_fraction=EVAL["validation_fraction"],
        code=code_version("ssae_steps.evals.tail"),
    conda:
        ENV
    log:
        "logs/eval/tail_concepts.log",
    shell:
        "{PY:q} -m ssae_steps.evals.tail --params {params.cfg:q} --subdomain-train {input.subdomain} "
        "--general-train {input.general} --subdomain-heldout {input.heldout} --model-dir results/model/hf "
        "--validation-fraction {params.validation_fraction} --out {output.tail} --types-out {output.types} "
        "> {log} 2>&1"


rule eval_baselines:
    input:
        sets=list(EVAL_SETS.values()),
        model="results/model/model.json",
    output:
        baselines="results/eval/baselines.json",
        clean_scores="results/eval/clean_scores.safetensors",
    params:
        cfg=as_json(LOSS_KEYS),
        seed=config["seed"],
        hook_layer=config["model"]["hook_layer"],
        device=DEVICE,
        code=code_version("ssae_steps.evals.evaluate"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/eval/baselines.log",
    benchmark:
        "benchmarks/eval/baselines.tsv"
    shell:
        "{PY:q} -m ssae_steps.evals.evaluate baselines --params {params.cfg:q} --sets {EVAL_SET_ARGS} "
        "--model-dir results/model/hf --hook-layer {params.hook_layer} --seed {params.seed} --out {output.baselines} "
        "--clean-scores {output.clean_scores} --device {params.device} --threads {threads} > {log} 2>&1"


rule evaluate_sae:
    input:
        sae="results/sae/{run}/summary.json",
        tail="results/eval/tail_tokens.csv",
        types="results/eval/token_types.csv",
        sets=list(EVAL_SETS.values()),
        model="results/model/model.json",
        clean_scores="results/eval/clean_scores.safetensors",
    output:
        metrics="results/eval/runs/{run}.json",
        per_doc="results/eval/runs/{run}.per_doc.parquet",
    wildcard_constraints:
        run=r"general/k\d+(-s\d+)?|" + SUBDOMAIN + r"/\w+/\w+-t[0-9.e+-]+-k\d+(-s\d+)?",
    params:
        cfg=as_json(SAE_EVAL_KEYS),
        seed=config["seed"],
        hook_layer=config["model"]["hook_layer"],
        device=DEVICE,
        code=code_version("ssae_steps.evals.evaluate"),
    threads: JOB_THREADS
    resources:
        gpu=GPU_PER_JOB,
    conda:
        ENV
    log:
        "logs/eval/runs/{run}.log",
    benchmark:
        "benchmarks/eval/runs/{run}.tsv"
    shell:
        "{PY:q} -m ssae_steps.evals.evaluate sae --params {params.cfg:q} --sets {EVAL_SET_ARGS} "
        "--sae-dir results/sae/{wildcards.run}/sae --tail-table {input.tail} --types-table {input.types} "
        "--model-dir results/model/hf --clean-scores {input.clean_scores} "
        "--hook-layer {params.hook_layer} --seed {params.seed} --out {output.metrics} --device {params.device} "
        "--threads {threads} > {log} 2>&1"


rule evaluation_report:
    input:
        runs=lambda wc: [eval_json(d) for d in sae_runs().values()],
        per_doc=lambda wc: [eval_json(d).removesuffix(".json") + ".per_doc.parquet" for d in sae_runs().values()],
        baselines="results/eval/baselines.json",
    output:
        table="results/eval/metrics.csv",
        comparisons="results/eval/comparisons.csv",
        by_seed="results/eval/metrics_by_seed.csv",
        recall_table="results/eval/recall_by_frequency.csv",
        capture_differences="results/eval/capture_differences.csv",
        recall=report(
            "results/eval/recall_by_frequency.png",
            caption="../report/eval_recall.rst",
            category="3. Evaluation",
        ),
        parquet="results/eval/metrics.parquet",
        pareto=report(
            "results/eval/pareto.png", caption="../report/eval_pareto.rst", category="3. Evaluation"
        ),
        comparison=report(
            "results/eval/comparison.png", caption="../report/eval_comparison.rst", category="3. Evaluation"
        ),
        summary=report("results/eval/summary.md", caption="../report/eval_summary.rst", category="3. Evaluation"),
    params:
        runs=lambda wc: as_json({name: eval_json(d) for name, d in sae_runs().items()}),
        sweep=lambda wc: as_json(pareto_curves()),
        main_k=MAIN_K,
        samples=EVAL["bootstrap_samples"],
        seed=config["seed"],
        rare=EVAL["tail"]["max_general_frequency"],
        primary=as_json(PRIMARY),
        code=code_version("ssae_steps.evals.report"),
    conda:
        ENV
    log:
        "logs/eval/report.log",
    shell:
        "{PY:q} -m ssae_steps.evals.report --runs {params.runs:q} --baselines {input.baselines} "
        "--main-k {params.main_k} --sweep {params.sweep:q} --bootstrap-samples {params.samples} "
        "--seed {params.seed} --out-table {output.table} "
        "--out-pareto {output.pareto} --out-comparison {output.comparison} --out-summary {output.summary} "
        "--out-recall {output.recall} --rare-frequency {params.rare} --primary {params.primary:q} "
        "> {log} 2>&1"


rule top_latents:
    input:
        ssae=lambda wc: f"{main_ssae_dir()}/summary.json",
        gsae=f"results/sae/general/k{MAIN_K}/summary.json",
        sets=list(EVAL_SETS.values()),
        model="results/model/model.json",
    output:
        report("results/eval/top_latents.md", caption="../report/top_latents.rst", category="3. Evaluation"),
    params:
        cfg=as_json(SHOW_KEYS),
        ssae=lambda wc: f"{main_ssae_dir()}/sae",
        code=code_version("ssae_steps.latents.contexts"),
    conda:
        ENV
    log:
        "logs/eval/top_latents.log",
    shell:
        "{PY:q} -m ssae_steps.latents.contexts --params {params.cfg:q} --ssae-dir {params.ssae} "
        "--gsae-dir results/sae/general/k{MAIN_K}/sae --subdomain-set {EVAL_SETS[subdomain]} "
        "--general-set {EVAL_SETS[general]} --model-dir results/model/hf --out {output} > {log} 2>&1"
