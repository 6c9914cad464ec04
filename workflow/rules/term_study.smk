# TERM study (term_study.enabled): SSAEs with the paper's recipe (finetuned, dense
# retrieval) at each tilt of term_study.tilts, at the main k (the first term_study.seeds
# training seeds) and at each of term_study.extra_ks (first seed), each evaluated like every
# SAE, then compared with plain ERM at the same k:
#   eval/term_study.csv, term_comparisons.csv, term_study.png, term_study.md

from dataclasses import replace

TERM = config["term_study"]  # TERM_PLAN: its dataclass, parsed in common.smk
if TERM["enabled"] and TERM_PLAN.seeds > len(SEEDS):
    raise WorkflowError(
        f"invalid config: term_study.seeds: {TERM_PLAN.seeds} exceeds the {len(SEEDS)} of training.seeds"
    )
# An imported GSAE has one k, and a finetuned SSAE takes its GSAE's k.
if TERM["enabled"] and TRAINING_PLAN.gsae.pretrained is not None and set(TERM_PLAN.extra_ks) - {MAIN_K}:
    raise WorkflowError(
        "invalid config: term_study.extra_ks: needs a trained GSAE (training.gsae.pretrained is set); use []"
    )
for _k in TERM_PLAN.extra_ks:
    try:
        replace(TRAINING_PLAN.shared.sae, k=_k).validate("term_study.extra_ks")
    except ConfigError as exc:
        raise WorkflowError(f"invalid config: {exc}")


def term_runs():
    """The study's SSAEs as {run name: directory}."""
    runs = {}
    for k in [MAIN_K, *TERM_PLAN.extra_ks]:
        for seed in SEEDS[: TERM_PLAN.seeds] if k == MAIN_K else SEEDS[:1]:
            for tilt in TERM_PLAN.tilts:
                run = ssae_recipe("finetune", tilt, k, seed_tag(seed))
                runs[ssae_run(SWEEP_STRATEGY, run)] = f"results/sae/{SUBDOMAIN}/{SWEEP_STRATEGY}/{run}"
    return runs


def term_outputs():
    if not TERM["enabled"]:
        return []
    return ["results/eval/term_study.md", "results/eval/term_study.png"]


rule term_study:
    input:
        runs=lambda wc: [eval_json(d) for d in term_runs().values()],
        per_doc=lambda wc: [eval_json(d).removesuffix(".json") + ".per_doc.parquet" for d in term_runs().values()],
        logs=lambda wc: [f"{d}/train_log.csv" for d in term_runs().values()],
        baselines="results/eval/baselines.json",
    output:
        table="results/eval/term_study.csv",
        comparisons="results/eval/term_comparisons.csv",
        plot=report("results/eval/term_study.png", caption="../report/term_study.rst", category="4. TERM study"),
        summary=report("results/eval/term_study.md", caption="../report/term_study.rst", category="4. TERM study"),
    params:
        runs=lambda wc: as_json({name: eval_json(d) for name, d in term_runs().items()}),
        logs=lambda wc: as_json({name: f"{d}/train_log.csv" for name, d in term_runs().items()}),
        rare=EVAL["tail"]["max_general_frequency"],
        samples=EVAL["bootstrap_samples"],
        seed=config["seed"],
        primary=as_json(PRIMARY),
        code=code_version("ssae_steps.evals.term_study"),
    conda:
        ENV
    log:
        "logs/eval/term_study.log",
    shell:
        "{PY:q} -m ssae_steps.evals.term_study --runs {params.runs:q} --train-logs {params.logs:q} "
        "--baselines {input.baselines} --rare-frequency {params.rare} --bootstrap-samples {params.samples} "
        "--seed {params.seed} --out-table {output.table} --out-plot {output.plot} --out-summary {output.summary} "
        "--primary {params.primary:q} > {log} 2>&1"
