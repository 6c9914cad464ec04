# The cost page: wall time, CPU time and peak memory per job and per stage, from the
# benchmark TSVs of every job behind the final outputs (so it runs last).
#   results/cost.csv, cost.png, cost.md


rule cost_report:
    input:
        FINAL_OUTPUTS,
    output:
        table="results/cost.csv",
        plot=report("results/cost.png", caption="../report/cost.rst", category="5. Cost"),
        summary=report("results/cost.md", caption="../report/cost.rst", category="5. Cost"),
    params:
        reference=(
            f"--reference {shlex.quote(config['cost']['reference'])}" if config["cost"]["reference"] else ""
        ),
        code=code_version("ssae_steps.cost"),
    conda:
        ENV
    log:
        "logs/cost_report.log",
    shell:
        "{PY:q} -m ssae_steps.cost --benchmarks benchmarks --out-table {output.table} "
        "--out-plot {output.plot} --out-summary {output.summary} {params.reference} > {log} 2>&1"
