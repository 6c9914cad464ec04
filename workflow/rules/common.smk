# Shared helpers: config validation, code fingerprints, interpreter.
import json
import math
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.logging import logger
from snakemake.resources import Resource
from snakemake.utils import available_cpu_count, validate

sys.path.insert(0, workflow.basedir)
from ssae_steps.activations.config import ActivationConfig  # noqa: E402
from ssae_steps.config import ConfigError, coerce_override_scalars, schema_errors  # noqa: E402
from ssae_steps.data.config import FILE_KINDS, CorpusConfig, expand_paths  # noqa: E402
from ssae_steps.debias.config import DebiasConfig  # noqa: E402
from ssae_steps.evals.config import EvaluationConfig, TermStudyConfig, resolve_primary  # noqa: E402
from ssae_steps.files import code_fingerprint, tree_digest  # noqa: E402
from ssae_steps.latents.config import LineageConfig  # noqa: E402
from ssae_steps.model import ModelConfig  # noqa: E402
from ssae_steps.retrieval.config import TRACIN_STRATEGIES, EmbedderConfig, RetrievalConfig  # noqa: E402
from ssae_steps.sae.config import TrainingPlan  # noqa: E402
from ssae_steps.sae.runs import gsae_run, seed_suffix, ssae_recipe, ssae_run  # noqa: E402

SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
# Our own pass first: one short line per problem, naming the key, before Snakemake's
# verbose report; validate() then fills in the schema defaults.
coerce_override_scalars(config, yaml.safe_load(SCHEMA.read_text()))
_problems = schema_errors(config, SCHEMA)
if _problems:
    raise WorkflowError("invalid config:\n  " + "\n  ".join(_problems))
validate(config, schema=str(SCHEMA))

# Second check, by the stage dataclasses themselves: catches what JSON Schema cannot
# express and keeps the modules and the workflow in agreement.
try:
    ModelConfig.from_dict(config["model"])
    ActivationConfig.from_dict(config["activations"])
    _retrieval = RetrievalConfig.from_dict(config["retrieval"])
    TRAINING_PLAN = TrainingPlan.from_dict(config["training"])
    EVALUATION_PLAN = EvaluationConfig.from_dict(config["evaluation"])
    DebiasConfig.from_dict({k: v for k, v in config["debias"].items() if k != "enabled"})
    TERM_PLAN = TermStudyConfig.from_dict({k: v for k, v in config["term_study"].items() if k != "enabled"})
    LineageConfig.from_dict({k: v for k, v in config["lineage"].items() if k != "enabled"})
    if TRAINING_PLAN.gsae.pretrained is not None:
        from ssae_steps.sae.autoencoder import load_sae

        load_sae(TRAINING_PLAN.gsae.pretrained)
    CORPUS_CONFIGS = {
        name: CorpusConfig.from_dict(spec, f"corpora.{name}")
        for name, spec in config["corpora"].items()
    }
    for _name, _corpus in CORPUS_CONFIGS.items():
        for _i, _source in enumerate(_corpus.sources):
            if _source.kind in FILE_KINDS:
                expand_paths(_source.path, f"corpora.{_name}.sources[{_i}]")
except ConfigError as exc:
    raise WorkflowError(f"invalid config: {exc}")

CORPORA = list(CORPUS_CONFIGS)
SUBDOMAINS = [n for n, c in CORPUS_CONFIGS.items() if c.role == "subdomain"]
GENERALS = [n for n, c in CORPUS_CONFIGS.items() if c.role == "general"]
if not GENERALS:
    raise WorkflowError("invalid config: corpora: at least one corpus needs role: general")
if not SUBDOMAINS:
    raise WorkflowError("invalid config: corpora: at least one corpus needs role: subdomain")


def _pick(key, value, candidates, role):
    if value is None:
        if len(candidates) != 1:
            raise WorkflowError(f"invalid config: retrieval.{key}: name one of the {role} corpora {candidates}")
        return candidates[0]
    if value not in candidates:
        raise WorkflowError(f"invalid config: retrieval.{key}: {value!r} is not a {role} corpus {candidates}")
    return value


SUBDOMAIN = _pick("subdomain", _retrieval.subdomain, SUBDOMAINS, "subdomain")
POOL = _pick("pool", _retrieval.pool, GENERALS, "general")
STRATEGIES = list(_retrieval.strategies)
# Resolved retrieval config (names filled in; validate() filled the defaults) as the steps receive it.
RETRIEVAL = {**config["retrieval"], "subdomain": SUBDOMAIN, "pool": POOL}

# Local runs never oversubscribe: `--cores 8` on a 2-core machine would start four 2-thread
# torch jobs at once, each running at a fraction of its speed. Cluster runs (--jobs sets
# nodes) place jobs on other machines and are left alone.
MACHINE_CORES = available_cpu_count()
if workflow.resource_settings.nodes is None and (workflow.resource_settings.cores or 0) > MACHINE_CORES:
    logger.warning(
        f"--cores {workflow.resource_settings.cores} exceeds this machine's {MACHINE_CORES} cores; "
        f"using {MACHINE_CORES} so concurrent jobs' threads fit the real cores"
    )
    workflow.register_resource("_cores", Resource("_cores", MACHINE_CORES))
# Torch threads per heavy job. On two cores, two 1-thread jobs at once beat one 2-thread job:
# each job's single-threaded stretches (start-up, loading, I/O) overlap the other's compute
# (measured: README, "Two commands"). From four cores up each job gets 2 threads, so the
# number of jobs held in memory at once stays at half the cores.
_LOCAL_CORES = min(workflow.resource_settings.cores or MACHINE_CORES, MACHINE_CORES)
JOB_THREADS = 2 if workflow.resource_settings.nodes is not None or _LOCAL_CORES >= 4 else 1

# `device: auto` resolves where the job runs; a rule asks for a GPU only when one is wanted.
DEVICE = config["device"]
GPU_PER_JOB = 1 if DEVICE == "cuda" else 0

# Without --sdm conda, the interpreter running Snakemake runs every step (so a venv need
# not be activated); with it, each rule's `python` comes from envs/ssae.yaml.
_methods = getattr(getattr(workflow, "deployment_settings", None), "deployment_method", ())
PY = "python" if any("conda" in str(m).lower() for m in _methods) else sys.executable
ENV = "../../envs/ssae.yaml"
# Steps import ssae_steps from this checkout even when it is not pip-installed.
shell.prefix(f"export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


def code_version(entry):
    """Fingerprint of the module a rule runs (``-m ENTRY``) and of every ssae_steps module
    it imports, transitively. Snakemake's code trigger does not see imported modules, so
    this goes into params and an edit to any of them reruns the rule."""
    return code_fingerprint(entry)


def content_digest(path):
    """Content hash of a user-named input file or directory (a local model, a pretrained
    SAE, a local data file) for params: replacing it in place reruns its consumers, which
    a path in params or a directory's mtime would miss. Empty where nothing is there yet
    (the stage itself reports the missing path)."""
    path = Path(str(path)).expanduser()
    return tree_digest(path) if path.exists() else ""


def as_json(obj):
    return json.dumps(obj, sort_keys=True)
