"""Debiasing case study: labelled biographies, and latent ablation on a planted dataset."""

from __future__ import annotations

import numpy as np
import pytest

from ssae_steps._config import ConfigError
from ssae_steps.bios import BiosConfig, assign_splits, description_profession, pronoun_gender
from ssae_steps.debias import CaseData, DebiasConfig, delete_gendered_words, run_case_study


def planted(n: int = 400, seed: int = 0) -> tuple[CaseData, np.ndarray, np.ndarray]:
    """Pooled activations built from 6 latents: 0/1 = male/female (strong), 2/3 =
    profession A/B (weak), 4/5 = noise. The biased training set has A = male, B = female."""
    rng = np.random.default_rng(seed)
    label, gender = rng.integers(0, 2, n), rng.integers(0, 2, n)
    a = np.zeros((n, 6))
    a[:, 0], a[:, 1] = 3.0 * (gender == 0), 3.0 * (gender == 1)
    a[:, 2], a[:, 3] = 1.0 * (label == 0), 1.0 * (label == 1)
    a[:, 4:] = rng.random((n, 2))
    decoder = np.zeros((6, 8))
    decoder[0, 1], decoder[1, 1], decoder[2, 0], decoder[3, 0], decoder[4, 2], decoder[5, 3] = 1, -1, 1, -1, 1, 1
    x = a @ decoder + 0.3 * rng.standard_normal((n, 8))
    test = np.zeros(n, bool)
    for p in (0, 1):
        for g in (0, 1):
            test[np.flatnonzero((label == p) & (gender == g))[:25]] = True
    biased = ~test & (label == gender)
    return CaseData(x=x, label=label, gender=gender, test=test, biased=biased), a, decoder


def test_ablating_the_planted_gender_latents_raises_worst_group_accuracy() -> None:
    data, a, decoder = planted()
    cfg = DebiasConfig(n_latents=[2], random_repeats=3)
    rows = run_case_study(data, {"sae": (a, decoder)}, cfg, seed=0)
    by = {r["method"]: r for r in rows}
    original, ablated, retrained = by["original probe"], by["ablate"], by["ablate + retrain"]
    assert sorted(ablated["latents"]) == [0, 1]  # the gender latents, not the profession ones
    assert original["worst_group_acc"] < 0.5  # the biased probe fails the counter-stereotypical groups
    assert retrained["worst_group_acc"] > 0.9 and retrained["worst_group_acc"] > original["worst_group_acc"] + 0.4
    assert ablated["gender_acc"] < 0.7 < original["gender_acc"]  # gender information removed
    assert by["random latents"]["worst_group_acc"] < retrained["worst_group_acc"]
    assert by["oracle probe"]["worst_group_acc"] > 0.9


def test_labels_follow_the_documented_rules() -> None:
    assert pronoun_gender("She was born in Paris. Her work ... she died.") == "female"
    assert pronoun_gender("He wrote. His books. She liked them.") is None  # 2 vs 1: no clear majority
    assert description_profession("American actress and singer", ["leader", "performer"]) == "performer"
    assert description_profession("French queen and painter", ["leader", "performer"]) is None  # two groups
    assert delete_gendered_words("She was a queen; her son ruled.") == "was a monarch; ruled."


def test_splits_are_confounded_and_balanced() -> None:
    rows = [
        {"text": f"t{i}", "profession": p, "gender": g}
        for i in range(30)
        for p in ("a", "b")
        for g in ("male", "female")
    ]
    cfg = BiosConfig(source="local", path="x", professions=["a", "b"], test_per_group=5)
    out = assign_splits(rows, cfg, seed=0)
    test = [r for r in out if r["split"] == "heldout"]
    assert len(test) == 20 and {(r["profession"], r["gender"]) for r in test} == {
        (p, g) for p in "ab" for g in ("male", "female")
    }
    biased = [r for r in out if r["biased_train"]]
    assert {(r["profession"], r["gender"]) for r in biased} == {("a", "male"), ("b", "female")}
    assert len(biased) == 50 and not any(r["split"] == "heldout" for r in biased)
    with pytest.raises(ConfigError, match="debias.data.test_per_group: 30 leaves no training documents"):
        assign_splits(rows, BiosConfig(source="local", path="x", professions=["a", "b"], test_per_group=30), 0)


def test_local_biographies_in_bias_in_bios_layout(tmp_path) -> None:
    """The local loader reads Bias in Bios columns (profession ids, gender 0/1)."""
    import json

    from ssae_steps.bios import load_biographies

    rows = [
        {"hard_text": "She teaches physics.", "profession": 21, "gender": 1},
        {"hard_text": "He is a nurse.", "profession": 13, "gender": 0},
        {"hard_text": "He is a surgeon.", "profession": 5, "gender": 0},  # another profession: skipped
    ]
    path = tmp_path / "bios.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = BiosConfig(source="local", path=str(path), professions=["21", "13"])
    assert load_biographies(cfg) == [
        {"text": "She teaches physics.", "profession": "21", "gender": "female"},
        {"text": "He is a nurse.", "profession": "13", "gender": "male"},
    ]
    with pytest.raises(ConfigError, match="bios.jsonl: record 0 has no field 'hard_text2'"):
        load_biographies(BiosConfig(source="local", path=str(path), professions=["21", "13"], text_field="hard_text2"))
