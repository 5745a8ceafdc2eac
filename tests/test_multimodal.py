"""Chapter 20 (multimodal): the dataset, the encoders (ViT parity with transformers' ViTModel), the CLIP loss (parity with
transformers), retrieval metrics, and the fusion wrappers (a gated model starts as the LM; LLaVA's prefix; generation)."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import require
from llm_lab.model import GPT, GPTConfig, KVCache
from llm_lab.multimodal import (ANSWERS, HELDOUT_PAIRS, CLIP, EarlyFusion, Flamingo, GatedCrossAttention, LateFusion, LLaVA,
                                PatchEmbedding, SmallCNN, ViT, ViTConfig, _gated_xattn_ref, clip_loss, encode_texts, make_scenes,
                                make_tone_clips, patchify, recall_at_k, reply_targets, spectrogram, vit_to_hf)


def _lm(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig.gpt2(vocab_size=40, context_len=64, n_layer=2, n_head=2, d_model=32)).eval()


class CharTok:   # a tiny tokenizer with the BPETokenizer interface the module uses (encode, decode, eot_id)
    eot_id = 39
    def encode(self, s): return [min(ord(c) - 32, 38) for c in s]
    def decode(self, ids): return ''.join(chr(i + 32) for i in ids)


def test_scenes_deterministic_and_split():
    a, b = make_scenes(40, 'train', seed=3), make_scenes(40, 'train', seed=3)
    assert [s.caption for s in a] == [s.caption for s in b] and all(torch.equal(x.image, y.image) for x, y in zip(a, b))
    held = make_scenes(40, 'heldout', seed=3)
    pairs = lambda scenes: {(o.colour, o.shape) for s in scenes for o in s.objects}
    assert not pairs(a) & set(HELDOUT_PAIRS) and all(any((o.colour, o.shape) in HELDOUT_PAIRS for o in s.objects) for s in held)
    for s in a + held:
        assert s.image.shape == (3, 24, 24) and 0 <= s.image.min() and s.image.max() <= 1
        assert all(ans in ANSWERS for _, ans in s.qa) and s.caption.startswith('a ')
        if len(s.objects) == 2:
            left, right = sorted(s.objects, key=lambda o: o.x)
            assert left.side == 'left' and right.side == 'right' and ' left of ' in s.caption
    with pytest.raises(ValueError, match='split'): make_scenes(1, 'validation')


def test_patch_embedding_is_patchify_plus_linear():
    x = torch.randn(2, 3, 12, 8)
    pe = PatchEmbedding(3, 4, 16)
    assert torch.allclose(pe(x), patchify(x, 4) @ pe.proj.weight.flatten(1).T + pe.proj.bias, atol=1e-5)
    with pytest.raises(ValueError, match='multiple'): patchify(x, 5)


@pytest.mark.parametrize('cfg', [ViTConfig(), ViTConfig(image_size=8, patch_size=2, channels=1, d_model=32, n_layer=3, n_head=2, norm_eps=1e-6)])
def test_vit_matches_transformers(cfg):
    require('transformers')
    torch.manual_seed(0)
    vit = ViT(cfg).eval()
    for p in vit.parameters(): p.data.normal_(0, 0.1)
    x = torch.rand(3, cfg.channels, cfg.image_size, cfg.image_size)
    with torch.no_grad(): diff = (vit(x) - vit_to_hf(vit)(pixel_values=x).last_hidden_state).abs().max().item()
    assert diff <= 1e-5, diff
    assert vit(x).shape == (3, cfg.n_patches + 1, cfg.d_model)


def test_vit_is_bidirectional_cnn_shapes():
    vit = ViT(ViTConfig()).eval()
    x = torch.rand(1, 3, 24, 24)
    y = x.clone(); y[..., 20:, 20:] = 0                        # change the last patch only
    with torch.no_grad(): assert not torch.allclose(vit(x)[:, 1], vit(y)[:, 1])   # the first patch sees the last one
    cnn = SmallCNN()
    assert cnn(x).shape == (1, 36, 64) and cnn.pool(cnn(x)).shape == (1, 64)


def test_clip_loss_matches_transformers():
    hf = require('transformers.models.clip.modeling_clip')
    hf_loss = getattr(hf, 'clip_loss', None) or hf.image_text_contrastive_loss
    L = torch.randn(7, 7, generator=torch.Generator().manual_seed(0)) * 3
    assert abs(clip_loss(L) - hf_loss(L.T)) <= 1e-6
    assert clip_loss(torch.eye(5) * 100) < 1e-6                        # perfect alignment


def test_clip_model_and_texts():
    tok = CharTok()
    ids, lengths = encode_texts(tok, ['ab', 'abcd'])
    assert ids.shape == (2, 5) and lengths.tolist() == [3, 5] and ids[0, 2:].eq(tok.eot_id).all()
    clip = CLIP(SmallCNN(1, 16), GPTConfig.gpt2(vocab_size=40, context_len=16, n_layer=1, n_head=2, d_model=16), d_embed=8)
    logits = clip(torch.rand(2, 1, 8, 8), ids, lengths)
    assert logits.shape == (2, 2) and math.isclose(clip.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-5)
    # the text vector is read at the closing token: padding after it does not change it
    ids2, l2 = encode_texts(tok, ['ab', 'abcd'], length=9)
    assert torch.allclose(clip.encode_text(ids, lengths), clip.encode_text(ids2, l2), atol=1e-6)


def test_recall_at_k():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.8], [0.0, 0.5, 0.4]])
    r = recall_at_k(sim, torch.eye(3, dtype=torch.bool), ks=(1, 2))
    assert r['image→text R@1'] == pytest.approx(1 / 3) and r['image→text R@2'] == pytest.approx(1.0)
    assert r['text→image R@1'] == pytest.approx(1 / 3) and r['text→image R@2'] == pytest.approx(1.0)


def test_gated_cross_attention_starts_closed_and_matches_reference():
    torch.manual_seed(0)
    layer = GatedCrossAttention(16, 16, n_head=4)
    x, img = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    assert torch.equal(layer(x, img), x)                                # tanh(0) = 0: the identity
    with torch.no_grad():
        layer.attn_gate.fill_(0.7)
        a = layer.attn
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, layer.image_proj): lin.bias.zero_()
        layer.image_proj.weight.copy_(torch.eye(16))
        ref = _gated_xattn_ref(layer.norm_1(x), img, a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight,
                               torch.tensor(0.7), 4) - layer.norm_1(x) + x
        assert torch.allclose(layer(x, img), ref, atol=1e-5)            # the MLP gate is still closed
    assert layer.weights.shape == (2, 4, 5, 7) and torch.allclose(layer.weights.sum(-1), torch.ones(2, 4, 5))


def test_flamingo_starts_as_the_lm_and_generates():
    lm = _lm()
    enc = SmallCNN(3, 16)
    fl = Flamingo(lm, enc, n_head=2)
    ids, images = torch.randint(0, 40, (2, 6)), torch.rand(2, 3, 8, 8)
    fl.set_image(images)
    assert torch.equal(fl.lm(ids)[0], lm(ids)[0])
    assert torch.equal(fl.generate(images, ids, 5, temperature=0.0), lm.generate(ids, 5, temperature=0.0))
    trainable = {n.split('.')[3] for n, p in fl.named_parameters() if p.requires_grad}
    assert trainable == {'xattn'}
    with torch.no_grad():
        for b in fl.lm.blocks: b.xattn.attn_gate.fill_(1.0)
    assert not torch.allclose(fl.hidden(images, ids), lm.hidden(ids))   # open gates: the image matters


def test_llava_prefix_and_generation():
    lm, tok = _lm(), CharTok()
    vlm = LLaVA(lm, SmallCNN(3, 16), image_token_id=tok.eot_id, freeze_lm=False, pool=1)
    images, ids = torch.rand(2, 3, 8, 8), torch.randint(0, 30, (2, 5))
    h = vlm.hidden(images, ids)
    n = vlm.image_encoder(images).shape[1]
    feats = vlm.projector(vlm.image_encoder(images))
    x = torch.cat([feats, lm.tok_emb(ids)], 1) + lm.pos_emb(torch.arange(n + 5))   # by hand: the prefix, then the words
    for b in lm.blocks: x = b(x)
    assert h.shape == (2, 5, 32) and torch.allclose(h, lm.norm_f(x)[:, n:], atol=1e-5)
    padded = torch.cat([ids, torch.full((2, 3), tok.eot_id)], 1)                  # the placeholder id also pads: only the prefix is replaced
    assert torch.allclose(vlm.hidden(images, padded)[:, :5], h, atol=1e-5)
    out = vlm.generate(images, ids, 4, temperature=0.0)
    assert out.shape == (2, 9) and torch.equal(out, vlm.generate(images, ids, 4, temperature=0.0, use_cache=False))
    ids_t, tgt = reply_targets(tok, [('Q:', ' ab'), ('Caption:', ' x')])
    assert tgt[0].tolist()[:6] == [-100, ids_t[0, 2].item(), ids_t[0, 3].item(), ids_t[0, 4].item(), tok.eot_id, -100]


def test_fusion_shapes_and_audio():
    tok = CharTok()
    ids, lengths = encode_texts(tok, ['what?', 'is it?'], eot=False, length=8)
    images = torch.rand(2, 3, 24, 24)
    assert EarlyFusion(40, max_text=8)(images, ids, lengths).shape == (2, len(ANSWERS))
    assert LateFusion(SmallCNN(), 40)(images, ids, lengths).shape == (2, len(ANSWERS))
    clips = make_tone_clips(3, seed=0)
    assert clips[0][1] == make_tone_clips(3, seed=0)[0][1] and spectrogram(clips[0][0]).shape == (1, 32, 32)
