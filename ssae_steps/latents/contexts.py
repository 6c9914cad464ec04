"""Top latents of a specialised SAE, with the held-out contexts they fire on most.

Latents are ranked by specialisation: firing rate on held-out subdomain text over firing
rate on held-out general text (add-one smoothed), among latents that fire at least
``min_fires`` times on the subdomain. For each, the table shows how close the nearest
GSAE decoder direction is (max cosine): a low value marks a direction the general SAE
does not have.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from ssae_steps.activations.sets import load_activation_set
from ssae_steps.cli import run
from ssae_steps.evals.config import EvaluationConfig
from ssae_steps.files import write_text
from ssae_steps.sae.autoencoder import SparseAutoencoder, load_sae

log = logging.getLogger("ssae.latent_contexts")


@torch.no_grad()
def latent_activations(sae: SparseAutoencoder, acts: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, ...]:
    """Active ``(rows, latents, values)`` of ``sae`` on ``acts``."""
    from ssae_steps.evals.evaluate import reconstruct

    rows, latents, values = [], [], []
    for start in range(0, len(acts), chunk):
        _, r, lat, val = reconstruct(sae, torch.from_numpy(acts[start : start + chunk]))
        rows.append(r.numpy() + start)
        latents.append(lat.numpy())
        values.append(val.numpy())
    return tuple(np.concatenate(p) for p in (rows, latents, values))


def firing_ratio(sub_fires: np.ndarray, sub_tokens: int, gen_fires: np.ndarray, gen_tokens: int) -> np.ndarray:
    """Subdomain specificity: firing rate on subdomain over general text, add-one smoothed."""
    return ((sub_fires + 1) / (sub_tokens + 1)) / ((gen_fires + 1) / (gen_tokens + 1))


def specialised_latents(
    sub_latents: np.ndarray, sub_tokens: int, gen_latents: np.ndarray, gen_tokens: int, d_sae: int, min_fires: int
) -> list[tuple[int, float, int, int]]:
    """``(latent, specialisation, subdomain fires, general fires)``, most specialised first."""
    sub = np.bincount(sub_latents, minlength=d_sae)
    gen = np.bincount(gen_latents, minlength=d_sae)
    ratio = firing_ratio(sub, sub_tokens, gen, gen_tokens)
    order = [int(j) for j in np.argsort(-ratio, kind="stable") if sub[j] >= min_fires]
    return [(j, float(ratio[j]), int(sub[j]), int(gen[j])) for j in order]


def _context(rows: dict[str, np.ndarray], index: dict[tuple[str, int], int], r: int, tokenizer: Any) -> str:
    """The firing token in [[brackets]] after up to 12 tokens of its document, and 2 after."""
    before = 12
    doc, pos = rows["doc_id"][r], int(rows["position"][r])
    ids = [rows["token_id"][index[(doc, p)]] for p in range(pos - before, pos) if (doc, p) in index]
    after = [rows["token_id"][index[(doc, p)]] for p in range(pos + 1, pos + 3) if (doc, p) in index]
    text = tokenizer.decode(ids) + " [[" + tokenizer.decode([rows["token_id"][r]]) + "]]" + tokenizer.decode(after)
    return text.replace("\n", " ").replace("|", "/").strip()


def top_latent_contexts(
    ssae_dir: str | Path,
    gsae_dir: str | Path,
    subdomain_set: str | Path,
    general_set: str | Path,
    model_dir: str | Path,
    out: str | Path,
    top_latents: int = 12,
    contexts_per_latent: int = 5,
    min_fires: int = 5,
) -> list[dict]:
    from transformers import AutoTokenizer

    ssae, gsae = load_sae(ssae_dir), load_sae(gsae_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    sub_rows, gen_rows = load_activation_set(subdomain_set), load_activation_set(general_set)
    s_rows, s_lat, s_val = latent_activations(ssae, sub_rows["activation"])
    _, g_lat, _ = latent_activations(ssae, gen_rows["activation"])
    ranked = specialised_latents(
        s_lat, len(sub_rows["token_id"]), g_lat, len(gen_rows["token_id"]), ssae.cfg.d_sae, min_fires
    )[:top_latents]
    # Cosine of each SSAE decoder row to its nearest GSAE decoder row (rows are unit norm in
    # normalised units; normalise again in raw units to be safe).
    s_dec = torch.nn.functional.normalize(ssae.W_dec / ssae.input_scale, dim=1)
    g_dec = torch.nn.functional.normalize(gsae.W_dec / gsae.input_scale, dim=1)
    index = {(d, int(p)): i for i, (d, p) in enumerate(zip(sub_rows["doc_id"], sub_rows["position"], strict=True))}
    found, lines = [], []
    lines += [
        f"# Top specialised latents of `{ssae_dir}`",
        "",
        "Ranked by firing rate on held-out subdomain text over firing rate on held-out general text.",
        "`GSAE cos`: cosine to the nearest general-SAE decoder direction (low = a direction the GSAE lacks).",
        "The firing token is in [[double brackets]].",
        "",
    ]
    for latent, ratio, sub_fires, gen_fires in ranked:
        mine = np.flatnonzero(s_lat == latent)
        best = mine[np.argsort(-s_val[mine], kind="stable")][:contexts_per_latent]
        contexts = [(float(s_val[i]), _context(sub_rows, index, int(s_rows[i]), tokenizer)) for i in best]
        cos = float((g_dec @ s_dec[latent]).max())
        found.append({"latent": latent, "specialisation": ratio, "gsae_cos": cos, "contexts": contexts})
        lines += [
            f"## Latent {latent}: {ratio:.1f}x more frequent on the subdomain "
            f"({sub_fires} vs {gen_fires} fires), GSAE cos {cos:.2f}",
            "",
            "| activation | context |",
            "| --- | --- |",
            *[f"| {v:.2f} | {text} |" for v, text in contexts],
            "",
        ]
    write_text(out, "\n".join(lines))
    log.info("wrote %d latents to %s", len(found), out)
    return found


def top_latents_command(
    ssae_dir: Path,
    gsae_dir: Path,
    subdomain_set: Annotated[Path, "held-out subdomain activation manifest"],
    general_set: Annotated[Path, "held-out general activation manifest"],
    model_dir: Path,
    params: Annotated[EvaluationConfig, "the evaluation config section"],
    out: Path,
) -> None:
    """Write the top specialised latents of an SSAE with their strongest held-out contexts."""
    top_latent_contexts(
        ssae_dir, gsae_dir, subdomain_set, general_set, model_dir, out, params.top_latents, params.contexts_per_latent
    )


def main(argv: list[str] | None = None) -> int:
    return run(top_latents_command, argv)


if __name__ == "__main__":
    sys.exit(main())
