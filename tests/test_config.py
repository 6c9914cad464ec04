"""Config schema and stage dataclasses agree, and bad config is rejected by key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ssae_steps.config import ConfigError, coerce_override_scalars, part_range, schema_errors
from ssae_steps.data.config import CorpusConfig, SourceConfig
from ssae_steps.debias.bios import BiosConfig
from ssae_steps.debias.config import DebiasConfig
from ssae_steps.evals.config import EvaluationConfig, TailConfig, TermStudyConfig
from ssae_steps.latents.config import LineageConfig
from ssae_steps.model import ModelConfig
from ssae_steps.sae.config import PER_RUN_KEYS, GeneralSAEPlan, SAEConfig, SpecialisedSAEPlan, TrainConfig, TrainingPlan

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def _defaults(cls: type) -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@pytest.mark.parametrize(
    ("cls", "schema_props"),
    [
        (ModelConfig, SCHEMA["properties"]["model"]["properties"]),
        (CorpusConfig, SCHEMA["$defs"]["corpus"]["properties"]),
        (SourceConfig, SCHEMA["$defs"]["source"]["properties"]),
        (TailConfig, SCHEMA["properties"]["evaluation"]["properties"]["tail"]["properties"]),
        (BiosConfig, SCHEMA["properties"]["debias"]["properties"]["data"]["properties"]),
    ],
)
def test_schema_and_dataclass_agree(cls: type, schema_props: dict) -> None:
    assert set(schema_props) == {f.name for f in dataclasses.fields(cls)}
    schema_defaults = {k: v["default"] for k, v in schema_props.items() if "default" in v}
    assert schema_defaults == _defaults(cls)


def test_training_schema_and_dataclasses_agree() -> None:
    """``training`` = TrainConfig minus the per-run keys, plus the GSAE/SSAE plans, k_sweep
    and seeds."""
    props = SCHEMA["properties"]["training"]["properties"]
    shared = {f.name for f in dataclasses.fields(TrainConfig)} - set(PER_RUN_KEYS)
    assert set(props) == shared | {"gsae", "ssae", "k_sweep", "seeds", "seed_strategies"}
    train_defaults = _defaults(TrainConfig)
    for key in shared - {"sae"}:
        assert props[key]["default"] == train_defaults[key], key
    sae_defaults = _defaults(SAEConfig)
    del sae_defaults["d_in"]  # taken from the activations, not configurable
    assert {k: v["default"] for k, v in props["sae"]["properties"].items()} == sae_defaults
    for key, cls in (("gsae", GeneralSAEPlan), ("ssae", SpecialisedSAEPlan)):
        assert {k: v["default"] for k, v in props[key]["properties"].items()} == _defaults(cls), key
    assert TrainingPlan.from_dict({}).k_sweep == props["k_sweep"]["default"]
    assert TrainingPlan.from_dict({}).seeds == props["seeds"]["default"]
    assert TrainingPlan.from_dict({}).seed_strategies == props["seed_strategies"]["default"]


def test_evaluation_schema_and_dataclass_agree() -> None:
    props = SCHEMA["properties"]["evaluation"]["properties"]
    assert set(props) == {f.name for f in dataclasses.fields(EvaluationConfig)}
    defaults = _defaults(EvaluationConfig)
    defaults["primary"] = [dataclasses.asdict(c) for c in defaults["primary"]]
    assert {k: v["default"] for k, v in props.items() if k != "tail"} == {
        k: v for k, v in defaults.items() if k != "tail"
    }


def test_term_study_schema_and_dataclass_agree() -> None:
    props = SCHEMA["properties"]["term_study"]["properties"]
    assert set(props) == {f.name for f in dataclasses.fields(TermStudyConfig)} | {"enabled"}
    assert {k: v["default"] for k, v in props.items() if k != "enabled"} == _defaults(TermStudyConfig)


def test_debias_schema_and_dataclass_agree() -> None:
    props = SCHEMA["properties"]["debias"]["properties"]
    assert set(props) == {f.name for f in dataclasses.fields(DebiasConfig)} | {"enabled"}
    defaults = {k: v for k, v in _defaults(DebiasConfig).items() if k != "data"}
    assert {k: v["default"] for k, v in props.items() if k not in ("data", "enabled")} == defaults


def test_lineage_schema_and_dataclass_agree() -> None:
    props = SCHEMA["properties"]["lineage"]["properties"]
    assert set(props) == {f.name for f in dataclasses.fields(LineageConfig)} | {"enabled"}
    assert {k: v["default"] for k, v in props.items() if k != "enabled"} == _defaults(LineageConfig)
    with pytest.raises(ConfigError, match=r"lineage.new_cosine: 0.95 is above kept_cosine 0.9"):
        LineageConfig.from_dict({"new_cosine": 0.95})


def test_training_plan_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"training.tilt: set per run"):
        TrainingPlan.from_dict({"tilt": 1.0})
    with pytest.raises(ConfigError, match=r"training.ssae.tilts: must be >= 0"):
        TrainingPlan.from_dict({"ssae": {"tilts": [-1.0]}})
    with pytest.raises(ConfigError, match=r"training.ssae.inits\[0\]: 'warm' is not one of"):
        TrainingPlan.from_dict({"ssae": {"inits": ["warm"]}})
    with pytest.raises(ConfigError, match=r"training.k_sweep.k: 9000 exceeds d_sae=8192"):
        TrainingPlan.from_dict({"k_sweep": [9000]})
    for seeds in ([], [0, 0], [1, -2], "0"):
        with pytest.raises(ConfigError, match=r"training.seeds: expected a non-empty list of distinct integers"):
            TrainingPlan.from_dict({"seeds": seeds})
    with pytest.raises(
        ConfigError, match=r"training.seed: set per run \(training.gsae / training.ssae / training.seeds\)"
    ):
        TrainingPlan.from_dict({"seed": 3})
    with pytest.raises(ConfigError, match=r"training.k_sweep: needs a trained GSAE"):
        TrainingPlan.from_dict({"k_sweep": [8], "gsae": {"pretrained": "/some/sae"}})
    with pytest.raises(ConfigError, match=r"training.sae: unknown key\(s\) 'width'"):
        TrainingPlan.from_dict({"sae": {"width": 8}})


def test_matryoshka_training_plan() -> None:
    """training.sae.architecture: matryoshka validates in the schema and the dataclasses, and
    reaches every run's config; bad prefixes are a ConfigError naming the key."""
    sae = {"architecture": "matryoshka", "d_sae": 64, "k": 4, "matryoshka_prefixes": [8, 32, 64]}
    config = {"corpora": {"g": {"sources": [{"kind": "python_docs"}]}}, "training": {"sae": sae}}
    assert schema_errors(config, SCHEMA_PATH) == []
    plan = TrainingPlan.from_dict({"sae": sae, "k_sweep": [8]})
    run = plan.run_config("ssae", "finetune", 2.0, k=8, seed=0)
    assert (run.sae.architecture, run.sae.k, run.sae.prefixes()) == ("matryoshka", 8, [8, 32, 64])
    assert TrainingPlan.from_dict({"sae": {"architecture": "matryoshka"}}).shared.sae.prefixes() == [512, 2048, 8192]
    with pytest.raises(
        ConfigError, match=r"training.sae.matryoshka_prefixes: must be positive and strictly increasing"
    ):
        TrainingPlan.from_dict({"sae": {**sae, "matryoshka_prefixes": [32, 8, 64]}})
    with pytest.raises(ConfigError, match=r"training.sae.matryoshka_prefixes: the last prefix must be d_sae=64"):
        TrainingPlan.from_dict({"sae": {**sae, "matryoshka_prefixes": [8, 32]}})
    bad = {**config, "training": {"sae": {**sae, "matryoshka_prefixes": [0, 64]}}}
    assert any("training.sae.matryoshka_prefixes[0]" in p for p in schema_errors(bad, SCHEMA_PATH))
    assert any(
        "training.sae.architecture" in p
        for p in schema_errors({**config, "training": {"sae": {"architecture": "gated"}}}, SCHEMA_PATH)
    )


def test_default_config_is_valid() -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert schema_errors(config, SCHEMA_PATH) == []
    ModelConfig.from_dict(config["model"])
    TrainingPlan.from_dict(config["training"])
    EvaluationConfig.from_dict(config["evaluation"])
    for name, spec in config["corpora"].items():
        CorpusConfig.from_dict(spec, f"corpora.{name}")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"corpora": {"g": {"sources": [{"kind": "python_docs"}]}}, "tilt": 1}, "'tilt' was unexpected"),
        (
            {"model": {"hook_layer": "two"}, "corpora": {"g": {"sources": [{"kind": "python_docs"}]}}},
            "model.hook_layer:",
        ),
        ({"corpora": {"g": {"sources": [{"kind": "jsonl"}]}}}, "corpora.g.sources[0]: 'path' is a required"),
        (
            {"corpora": {"g": {"heldout_fraction": 1.5, "sources": [{"kind": "python_docs"}]}}},
            "corpora.g.heldout_fraction",
        ),
        ({"corpora": {"g": {"sources": [{"kind": "pdf", "path": "x"}]}}}, "corpora.g.sources[0].kind"),
        ({"model": {"hook_layer": 3}}, "'corpora' is a required property"),
    ],
)
def test_schema_errors_name_the_key(config: dict, expected: str) -> None:
    problems = schema_errors(config, SCHEMA_PATH)
    assert any(expected in p for p in problems), problems


def test_dataclass_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model.hook_layr.*unknown|unknown key\(s\) 'hook_layr'"):
        ModelConfig.from_dict({"hook_layr": 2})
    with pytest.raises(ConfigError, match=r"model.hook_layer: expected an integer"):
        ModelConfig.from_dict({"hook_layer": True})
    with pytest.raises(ConfigError, match=r"corpora.x.sources\[0\].path: required"):
        CorpusConfig.from_dict({"sources": [{"kind": "txt"}]}, "corpora.x")
    with pytest.raises(ConfigError, match=r"corpora.x.sources: at least one"):
        CorpusConfig.from_dict({"sources": []}, "corpora.x")
    with pytest.raises(ConfigError, match=r"corpora.x.sources\[0\].kind: 'pdf' is not one of"):
        CorpusConfig.from_dict({"sources": [{"kind": "pdf"}]}, "corpora.x")


def test_override_strings_become_the_schema_types() -> None:
    """Snakemake's nested ``--config`` overrides arrive as strings; the schema's booleans and
    numbers are restored, strings stay strings, and a value that is neither is left for the
    schema check to name."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["term_study"] = {"enabled": "false", "tilts": ["0", "1e3", "2.5"], "seeds": "3"}
    config["training"]["gsae"]["snapshots"] = "2"
    config["model"]["name"] = "123"
    config["lineage"]["enabled"] = "maybe"
    coerce_override_scalars(config, SCHEMA)
    assert config["term_study"] == {"enabled": False, "tilts": [0, 1000.0, 2.5], "seeds": 3}
    assert config["training"]["gsae"]["snapshots"] == 2 and config["model"]["name"] == "123"
    assert schema_errors(config, SCHEMA_PATH) == ["lineage.enabled: 'maybe' is not of type 'boolean'"]


def test_part_range_cuts_contiguous_near_equal_runs_and_names_the_key() -> None:
    """The scatter of both scatter/gathers: parts cover 0..n once, in order, sizes within 1."""
    runs = [part_range(10, i, 3, "activations.parts") for i in range(3)]
    assert runs == [(0, 3), (3, 6), (6, 10)]
    assert [part_range(2, i, 3, "k")[1] - part_range(2, i, 3, "k")[0] for i in range(3)] == [0, 1, 1]
    with pytest.raises(ConfigError, match=r"retrieval.embedder.parts: part 3 of 3 does not exist"):
        part_range(10, 3, 3, "retrieval.embedder.parts")
