"""The encoder on a tiny random model: prompt, special tokens, padding, images, errors."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from proxy_model.encoder import BOS, EMB, EOS, IMG, ItemContent, build_tiny_encoder
from proxy_model.errors import InvalidItemError
from proxy_model.vision import decode_image


@pytest.fixture(scope="module")
def encoder():
    return build_tiny_encoder(seed=1)


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))


def test_prompt_is_exactly_the_papers_template(encoder):
    tokens = encoder.tokenizer.convert_ids_to_tokens(encoder.prompt_ids("Red mug", has_image=True))
    text = encoder.tokenizer.convert_tokens_to_string(tokens)
    assert tokens[0] == BOS and tokens[-1] == EOS
    assert tokens[1 : 1 + encoder.n_visual_tokens] == [IMG] * encoder.n_visual_tokens
    assert tokens.count(EMB) == 1
    expected = f'{BOS}{IMG * encoder.n_visual_tokens}Red mugThe compression word is:"{EMB}". {EOS}'
    assert text == expected


def test_special_tokens_are_new_and_embeddings_resized(encoder):
    ids = encoder.tokenizer.convert_tokens_to_ids([BOS, EOS, EMB, IMG])
    assert len(set(ids)) == 4
    assert min(ids) >= 256  # the byte vocabulary comes first; these were added
    assert encoder.lm.get_input_embeddings().num_embeddings == len(encoder.tokenizer)


def test_text_only_items_have_no_image_positions(encoder):
    tokens = encoder.tokenizer.convert_ids_to_tokens(encoder.prompt_ids("Red mug", has_image=False))
    assert IMG not in tokens


def test_hidden_states_shape_and_layers(encoder):
    out = encoder([ItemContent("a"), ItemContent("bb", _image())], layers=[1, 3, 6])
    assert out.hidden.shape[:2] == (3, 2)
    assert out.hidden.shape[-1] == encoder.hidden_size
    full = encoder([ItemContent("a")])
    assert full.hidden.shape[0] == encoder.n_layers


def test_right_padding_does_not_change_an_items_states(encoder):
    alone = encoder([ItemContent("short")])
    batched = encoder([ItemContent("short"), ItemContent("a much longer item text than the first")])
    n = int(alone.mask.sum())
    assert batched.mask[0, :n].all() and not batched.mask[0, n:].any()  # right-padded
    assert torch.allclose(alone.hidden[:, 0, :n], batched.hidden[:, 0, :n], atol=1e-5)
    assert int(batched.emb_index[0]) == int(alone.emb_index[0])


def test_image_changes_the_states(encoder):
    a = encoder([ItemContent("same text", _image(0))]).hidden[-1]
    b = encoder([ItemContent("same text", _image(1))]).hidden[-1]
    assert not torch.allclose(a, b)


def test_bad_content_raises_clear_errors(encoder):
    with pytest.raises(InvalidItemError, match="empty"):
        encoder([ItemContent("   ")])
    with pytest.raises(InvalidItemError, match="corrupt image"):
        decode_image(b"\x89PNG\r\n\x1a\nnot really a png", max_bytes=1000)
    with pytest.raises(InvalidItemError, match="limit"):
        decode_image(b"x" * 2000, max_bytes=1000)
    buf = io.BytesIO()
    _image().save(buf, format="PNG")
    assert decode_image(buf.getvalue(), max_bytes=1 << 20).size == (40, 40)


def test_text_only_encoder_rejects_images():
    enc = build_tiny_encoder(with_vision=False)
    with pytest.raises(InvalidItemError, match="no vision tower"):
        enc([ItemContent("x", _image())])
