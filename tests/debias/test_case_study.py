"""Debiasing case study: labelled biographies, and latent ablation on planted datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssae_steps.config import ConfigError
from ssae_steps.debias.bios import (
    PROFESSION_WORD,
    BiosConfig,
    assign_splits,
    description_profession,
    load_biographies,
    pronoun_gender,
    remove_profession_sentences,
    swap_gender,
)
from ssae_steps.debias.case_study import run_case_study, run_variants
from ssae_steps.debias.config import DebiasConfig
from ssae_steps.debias.probes import CaseData, Outcome, delete_gendered_words, sparse_probe
from ssae_steps.debias.report import choose_n, comparison_line, paired_comparisons, summary_markdown
from ssae_steps.evals.family import Family


def planted(n: int = 400, seed: int = 0, female_latent: float = 3.0, hidden_gender: float = 0.0):
    """Pooled activations built from 6 latents: 0/1 = male/female, 2/3 = profession A/B
    (weak), 4/5 = noise; ``hidden_gender`` adds gender along a direction no latent has (the
    SAE error term). 25 test and 10 validation documents per group; the biased training set
    has A = male, B = female."""
    rng = np.random.default_rng(seed)
    label, gender = rng.integers(0, 2, n), rng.integers(0, 2, n)
    a = np.zeros((n, 6))
    a[:, 0], a[:, 1] = 3.0 * (gender == 0), female_latent * (gender == 1)
    a[:, 2], a[:, 3] = 1.0 * (label == 0), 1.0 * (label == 1)
    a[:, 4:] = rng.random((n, 2))
    decoder = np.zeros((6, 8))
    decoder[0, 1], decoder[1, 1], decoder[2, 0], decoder[3, 0], decoder[4, 2], decoder[5, 3] = 1, -1, 1, -1, 1, 1
    x = a @ decoder + 0.3 * rng.standard_normal((n, 8))
    x[:, 7] += hidden_gender * gender
    test, validation = np.zeros(n, bool), np.zeros(n, bool)
    for p in (0, 1):
        for g in (0, 1):
            members = np.flatnonzero((label == p) & (gender == g))
            test[members[:25]] = True
            validation[members[25:35]] = True
    train = ~test & ~validation
    data = CaseData(
        x=x, label=label, gender=gender, test=test, validation=validation, train=train, biased=train & (label == gender)
    )
    return data, a, decoder


def outcome(outcomes: list[Outcome], method: str, n: int = 0) -> Outcome:
    return next(o for o in outcomes if o.method == method and o.n_latents == n)


def test_ablating_the_planted_gender_latents_raises_worst_group_accuracy() -> None:
    data, a, decoder = planted()
    outcomes = run_case_study(data, {("sae", 0): (a, decoder)}, DebiasConfig(n_latents=[2], random_repeats=3), seed=0)
    points = {(o.method, o.n_latents): o.point(data) for o in outcomes}
    original, shift = points[("original probe", 0)], points[("SHIFT", 2)]
    retrained = points[("SHIFT + retrain", 2)]
    assert sorted(shift["latents"]) == [0, 1]  # the gender latents, not the profession ones
    assert original["worst_group_acc"] < 0.5  # the biased probe fails the counter-stereotypical groups
    assert retrained["worst_group_acc"] > 0.9 and retrained["worst_group_acc"] > original["worst_group_acc"] + 0.4
    # Both gender latents gone: even a gender probe retrained on ablated data is at chance.
    assert retrained["gender_acc_retrained"] < 0.65 < 0.9 < original["gender_acc_frozen"]
    assert points[("random latents + retrain", 2)]["worst_group_acc"] < retrained["worst_group_acc"]
    assert points[("oracle probe", 0)]["worst_group_acc"] > 0.9


def test_a_frozen_gender_probe_that_drops_is_told_apart_from_removed_information() -> None:
    """Only latent 0 carries gender in the dictionary, but gender also sits in the SAE error
    term: ablating latent 0 shifts the frozen probe's logit to ~chance, while a probe
    retrained on the ablated data still reads gender."""
    data, a, decoder = planted(female_latent=0.0, hidden_gender=1.5)
    outcomes = run_case_study(data, {("sae", 0): (a, decoder)}, DebiasConfig(n_latents=[1], random_repeats=1), 0)
    shift = outcome(outcomes, "SHIFT", 1)
    assert shift.latents == [0]
    assert shift.gender_frozen.mean() < 0.65
    assert shift.gender_retrained.mean() > 0.9


def test_an_sae_without_gender_latents_loses_the_paired_comparison() -> None:
    """The "GSAE" here has no gender latents (gender sits in its error term), so SHIFT
    cannot remove gender with it: the paired comparison finds the SSAE better."""
    data, a, decoder = planted()
    blind = a.copy()
    blind[:, :2] = 0
    saes = {(name, s): (acts, decoder) for s in (0, 1) for name, acts in (("ssae_bios", a), ("gsae", blind))}
    outcomes = run_case_study(data, saes, DebiasConfig(n_latents=[2], random_repeats=1), seed=0)
    declared = {"study": "debias", "run": "ssae_bios", "reference_run": "gsae", "set": "main variant"}
    family = Family(({**declared, "label": "retrain", "metric": "shift_retrain_worst_group"},))
    cfg = DebiasConfig(bootstrap_samples=200)
    rows = {r["method"]: r for r in paired_comparisons(outcomes, data, cfg, 0, family)}
    assert set(rows) == {"SHIFT", "SHIFT + retrain"}
    retrain = rows["SHIFT + retrain"]
    assert retrain["seeds"] == 2 and retrain["reference"] == "gsae" and retrain["role"] == "primary"
    assert retrain["difference"] > 0.3 and retrain["family_ci_low"] > 0 and retrain["finding"]
    # Not declared: the same kind of gap is exploratory, never a finding.
    assert rows["SHIFT"]["role"] == "exploratory" and not rows["SHIFT"]["finding"]
    # With one training seed even the declared comparison is no finding.
    one = {key: value for key, value in saes.items() if key[1] == 0}
    outcomes = run_case_study(data, one, DebiasConfig(n_latents=[2], random_repeats=1), seed=0)
    single = {r["method"]: r for r in paired_comparisons(outcomes, data, cfg, 0, family)}["SHIFT + retrain"]
    assert single["role"] == "primary" and not single["training_variance"] and not single["finding"]
    assert "training variance not included" in comparison_line(single)


def test_each_variant_reports_its_biography_ssae_and_the_swap_control_beside_the_others() -> None:
    """With copies in the table: the main variant reports every SAE, the swap control and
    the real-only biography SSAE included, each with intervals, and compares the
    biography SSAE with each; the "real" variant leaves out every SAE finetuned on swapped
    text, so its biography SSAE is the real-only one."""
    import pandas as pd

    data, a, decoder = planted()
    rng = np.random.default_rng(1)
    copy = data.train & (rng.random(len(data.label)) < 0.4)
    split = np.where(data.test, "heldout", np.where(data.validation, "validation", "train"))
    docs = pd.DataFrame(
        {"label": data.label, "gender": np.where(data.gender == 1, "female", "male"), "split": split,
         "counterfactual": copy, "biased_train": data.biased, "biased_train_real": data.biased & ~copy}
    )  # fmt: skip
    names = ("gsae", "ssae_bios", "ssae_bios_real", "ssae_swap", "ssae_physics")
    inputs = {(name, s): (a + 0.01 * i, decoder) for s in (0, 1) for i, name in enumerate(names)}
    cfg = DebiasConfig(n_latents=[2], random_repeats=1, bootstrap_samples=200, sparse_probing_k=[1])
    tables, comparisons, points, _, sparse = run_variants(docs, data.x, None, inputs, cfg, seed=0)

    assert list(tables) == ["copies", "real"]
    reported = {v: {r["sae"] for r in rows} - {"-"} for v, rows in tables.items()}
    assert reported == {"copies": set(names), "real": {"gsae", "ssae_bios_real", "ssae_physics"}}
    swap = {r["method"]: r for r in tables["copies"] if r["sae"] == "ssae_swap"}
    assert set(swap) == {"SHIFT ssae_swap", "SHIFT + retrain ssae_swap", "random latents ssae_swap",
                         "random latents + retrain ssae_swap"}  # fmt: skip
    for row in swap.values():
        assert row["seeds"] == 2 and row["sae_training"].startswith("swap control")
        assert row["worst_group_acc_ci_low"] <= row["worst_group_acc"] <= row["worst_group_acc_ci_high"]
    real_bios = next(r for r in tables["real"] if r["method"] == "SHIFT ssae_bios_real")
    assert real_bios["paper"] == (90.2, 53.4, 88.5)  # the paper's biography SSAE read real biographies
    # ... beside each variant's own biography SSAE only.
    papered = {v: {r["sae"] for r in rows if r["paper"] and r["sae"] != "-"} for v, rows in tables.items()}
    assert "ssae_bios" in papered["copies"] and "ssae_bios_real" not in papered["copies"]
    assert "ssae_bios_real" in papered["real"]
    pairs = {v: {(r["sae"], r["reference"]) for r in rows} for v, rows in comparisons.items()}
    assert pairs == {
        "copies": {("ssae_bios", b) for b in ("gsae", "ssae_bios_real", "ssae_swap", "ssae_physics")},
        "real": {("ssae_bios_real", "gsae"), ("ssae_bios_real", "ssae_physics")},
    }
    assert all(r["seeds"] == 2 and r["ci_low"] <= r["difference"] <= r["ci_high"] for r in comparisons["copies"])
    assert {p["sae"] for p in points if p["variant"] == "real"} - {"-"} == reported["real"]
    assert {r["sae"] for r in sparse} == set(names)

    training = {"ssae_swap": {"real": 140, "copies": 140, "characters": 138720,
                              "gendered_words_per_1000_characters": 9.8}}  # fmt: skip
    counts = {"test (real)": {"a/male": 25}}
    summary = summary_markdown(tables, comparisons, sparse, counts, "copies", training)
    assert "| ssae_swap | swap control: non-biography pool text, each document with its gender-swapped copy " in summary
    assert "| copies | 140 + 140 | 138,720 | 9.8 |" in summary
    assert "| ssae_bios_real | the training biographies, real articles only | copies, real |" in summary
    assert "| SHIFT + retrain ssae_swap | 2 | 2 |" in summary
    assert "the biography SSAE is ssae_bios_real." in summary
    assert "SHIFT + retrain: ssae_bios - ssae_swap" in summary and "SHIFT: ssae_bios_real - gsae" in summary


def test_sparse_probing_picks_the_planted_latent_at_k1() -> None:
    data, a, _ = planted(female_latent=2.0)
    top, correct = sparse_probe(a, data.gender, data, k=1, l2=0.01)
    assert top.tolist() == [0] and correct.mean() > 0.95
    top, correct = sparse_probe(a, data.label, data, k=1, l2=0.01)
    assert top.tolist()[0] in (2, 3) and correct.mean() > 0.95


def test_the_number_of_latents_is_chosen_on_validation_not_test() -> None:
    data, _, _ = planted()
    nv, nt = int(data.validation.sum()), int(data.test.sum())

    def run(n: int, val_ok: bool, test_ok: bool) -> Outcome:
        return Outcome(
            "sae", 0, "SHIFT", n, np.full(nv, float(val_ok)), np.full(nt, float(test_ok)), np.ones(nt), np.ones(nt)
        )

    assert choose_n([run(1, True, False), run(2, False, True)], data) == {("sae", "SHIFT"): 1}


def test_labels_follow_the_documented_rules() -> None:
    assert pronoun_gender("She was born in Paris. Her work ... she died.") == "female"
    assert pronoun_gender("He wrote. His books. She liked them.") is None  # 2 vs 1: no clear majority
    assert description_profession("American actress and singer", ["leader", "performer"]) == "performer"
    assert description_profession("French queen and painter", ["leader", "performer"]) is None  # two groups
    assert delete_gendered_words("She was a queen; her son ruled.") == "was a monarch; ruled."


def test_profession_sentences_are_removed_from_real_leads() -> None:
    from ssae_steps.data.sources import read_wiki_summaries

    leads = {
        labels["title"]: text
        for text, labels in read_wiki_summaries()
        if labels["title"] in ("Marie Curie", "Marilyn Monroe", "Ella Fitzgerald")
    }
    assert len(leads) == 3
    for text in leads.values():
        hard = remove_profession_sentences(text)
        assert hard and not PROFESSION_WORD.search(hard)
        assert all(sentence in text for sentence in hard.split(". "))  # kept sentences are verbatim
    curie = remove_profession_sentences(leads["Marie Curie"])
    assert "physicist" not in curie and "chemist" not in curie
    assert curie.startswith("She shared the 1903 Nobel Prize in Physics with her husband")  # the rest, verbatim
    monroe = remove_profession_sentences(leads["Marilyn Monroe"])
    assert "actress" not in monroe and "sex symbols of the 1950s" in monroe


def test_counterfactual_copies_swap_gender_words() -> None:
    text = "She married her husband in 1900. Her son was born; she gave her the book. Queen Mary, an actress."
    assert swap_gender(text) == (
        "He married his wife in 1900. His daughter was born; he gave him the book. King Mary, an actor."
    )


def test_splits_are_confounded_balanced_and_keep_copies_out_of_test() -> None:
    rows = [
        {"text": f"{g} {p} {i} " + ("she" if g == "female" else "he"), "profession": p, "gender": g}
        for i in range(30)
        for p in ("a", "b")
        for g in ("male", "female")
    ]
    base = {"source": "local", "path": "x", "professions": ["a", "b"], "test_per_group": 5}
    assert not BiosConfig(**base).with_copies and BiosConfig().with_copies  # default: copies for wiki_people only
    assert not any(r["counterfactual"] for r in assign_splits(rows, BiosConfig(**base), seed=0))
    cfg = BiosConfig(**base, validation_per_group=3, counterfactual=True)
    out = assign_splits(rows, cfg, seed=0)
    test = [r for r in out if r["split"] == "heldout"]
    assert len(test) == 20 and not any(r["counterfactual"] for r in test)
    assert {(r["profession"], r["gender"]) for r in test} == {(p, g) for p in "ab" for g in ("male", "female")}
    test_sources = {r["source"] for r in test}
    copies = [r for r in out if r["counterfactual"]]
    assert copies and not any(r["source"] in test_sources for r in copies)  # no copy of a test article
    split_of = {r["source"]: r["split"] for r in out if not r["counterfactual"]}
    assert all(r["split"] == split_of[r["source"]] for r in copies)  # a copy stays with its article
    assert all(r["gender"] != next(s for s in out if s["text"] == r["source"])["gender"] for r in copies)
    for column, real_only in (("biased_train", False), ("biased_train_real", True)):
        biased = [r for r in out if r[column]]
        assert {(r["profession"], r["gender"]) for r in biased} == {("a", "male"), ("b", "female")}
        assert all(r["split"] == "train" for r in biased)
        assert sum(r["profession"] == "a" for r in biased) == sum(r["profession"] == "b" for r in biased)
        assert not real_only or not any(r["counterfactual"] for r in biased)
    with pytest.raises(ConfigError, match="debias.data.test_per_group: 31 real documents per group needed"):
        assign_splits(rows, BiosConfig(source="local", path="x", professions=["a", "b"], test_per_group=31), 0)
    with pytest.raises(ConfigError, match="leaves no training documents"):
        no_copies = BiosConfig(
            source="local", path="x", professions=["a", "b"], test_per_group=30, counterfactual=False
        )
        assign_splits(rows, no_copies, 0)


def test_default_data_has_headroom_sized_groups() -> None:
    """The shipped person articles give the documented default test set: 25 real test
    articles per group, and training articles in every group once copies are added."""
    cfg = BiosConfig()
    out = assign_splits(load_biographies(cfg), cfg, seed=0)
    groups = {(p, g) for p in cfg.professions for g in ("male", "female")}
    for p, g in groups:
        members = [r for r in out if r["profession"] == p and r["gender"] == g]
        assert sum(r["split"] == "heldout" for r in members) == 25
        assert sum(r["split"] == "train" for r in members) >= 20
    assert not any(PROFESSION_WORD.search(r["text"]) for r in out if not r["counterfactual"])


def test_local_biographies_in_bias_in_bios_layout(tmp_path) -> None:
    """The local loader reads Bias in Bios columns (profession ids, gender 0/1)."""
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
