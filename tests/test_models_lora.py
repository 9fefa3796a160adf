"""Policy loading, prompt cache, CFG batching and LoRA adapter arithmetic on tiny SD3-layout models."""
import pytest
import torch

from rollout import lora
from rollout.models import ModelLoadError, PolicyOptions, T2IPolicy, build_tiny_sd3


@pytest.fixture
def policy(tiny_words):
    return T2IPolicy(build_tiny_sd3(tiny_words, with_t5=False, with_vae=False), PolicyOptions(max_sequence_length=0))


def _perturb(model, name, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.adapter_params(model, name).values():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("t5,vae", [(True, True), (False, False)])
def test_save_load_round_trip_identical_outputs(tiny_words, tmp_path, t5, vae):
    opts = PolicyOptions(max_sequence_length=8 if t5 else 0)
    p = T2IPolicy(build_tiny_sd3(tiny_words, with_t5=t5, with_vae=vae), opts)
    prompts = ["a photo of a red cat", "two blue dog", ""]
    x = torch.randn(3, *p.latent_shape(32, 32))
    cond = p.encode(prompts)
    v = p.velocity(x, 0.5, cond, guidance=4.5)
    img = p.decode(x)
    p.save_pretrained(tmp_path / "m")
    q = T2IPolicy.from_pretrained(tmp_path / "m", opts)
    assert (q.vae is None) == (not vae) and (q.pipe.text_encoder_3 is None) == (not t5)
    cond_q = q.encode(prompts)
    assert torch.equal(cond[0], cond_q[0]) and torch.equal(cond[1], cond_q[1])
    assert torch.equal(v, q.velocity(x, 0.5, cond_q, guidance=4.5))
    assert torch.equal(img, q.decode(x))


def test_missing_or_incomplete_model_dir_names_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        T2IPolicy.from_pretrained(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json"):
        T2IPolicy.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model_index.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="transformer.*no weights"):
        T2IPolicy.from_pretrained(tmp_path / "m")


def test_broken_tokenizer_fails_loudly(tiny_words, tmp_path):
    import json

    p = T2IPolicy(build_tiny_sd3(tiny_words, with_t5=False, with_vae=False), PolicyOptions(max_sequence_length=0))
    p.save_pretrained(tmp_path / "m")
    tok_json = tmp_path / "m" / "tokenizer" / "tokenizer.json"
    data = json.loads(tok_json.read_text())
    data["added_tokens"] = []
    data["model"]["vocab"] = {"<unk>": 0}
    data["post_processor"] = None
    tok_json.write_text(json.dumps(data))
    cfg = tmp_path / "m" / "tokenizer" / "tokenizer_config.json"
    cfg.write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 20}))
    with pytest.raises(ModelLoadError, match="tokenizer: loaded a tokenizer with 1 tokens"):
        T2IPolicy.from_pretrained(tmp_path / "m", PolicyOptions(max_sequence_length=0))


def test_prompt_cache_matches_uncached_and_pools_at_eos(policy):
    cond = policy.encode(["a red cat", "a blue dog", "a red cat"])
    e, q = policy.encode_uncached(["a red cat", "a blue dog"])
    assert torch.allclose(cond[0][0], e[0]) and torch.equal(cond[0][0], cond[0][2])
    assert len(policy._cache) == 2
    # pooling reads the EOS position: changing a token after EOS (padding) must not change the pooled output
    enc = policy.pipe.text_encoder
    tok = policy.pipe.tokenizer
    ids = tok(["a red cat"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    ids2 = ids.clone()
    ids2[0, -1] = tok.convert_tokens_to_ids("dog")  # a high id after EOS
    out1, out2 = enc(ids).text_embeds, enc(ids2).text_embeds
    assert torch.allclose(out1, out2, atol=1e-6)


def test_cfg_is_one_batched_forward_and_matches_two_forwards(policy):
    x = torch.randn(2, *policy.latent_shape(32, 32))
    cond = policy.encode(["a red cat", "a dog"])
    neg = policy.encode(["", ""])
    calls = []
    hook = policy.transformer.register_forward_hook(lambda m, i, o: calls.append(1))
    v = policy.velocity(x, 0.7, cond, guidance=4.5)
    assert len(calls) == 1
    hook.remove()
    v_c, v_u = policy.velocity(x, 0.7, cond), policy.velocity(x, 0.7, neg)
    assert torch.allclose(v, v_u + 4.5 * (v_c - v_u), atol=1e-5)


def test_reference_forward_equals_base_model_exactly(policy):
    x = torch.randn(2, *policy.latent_shape(32, 32))
    cond = policy.encode(["a red cat", "a dog"])
    base = policy.velocity(x, 0.5, cond)
    lora.add_lora(policy.transformer, lora.LoraOptions(rank=4, alpha=8), seed=0)
    assert torch.equal(policy.velocity(x, 0.5, cond), base)  # gaussian init: B = 0
    _perturb(policy.transformer, lora.TRAINABLE)
    assert not torch.allclose(policy.velocity(x, 0.5, cond), base)
    with lora.reference(policy.transformer):
        assert torch.equal(policy.velocity(x, 0.5, cond), base)
    with lora.use_adapter(policy.transformer, lora.OLD):  # old is still the initial copy
        assert torch.equal(policy.velocity(x, 0.5, cond), base)
    trainable = {n for n, p in policy.transformer.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)


def test_lora_targets_exclude_attn2(tiny_words):
    from diffusers import SD3Transformer2DModel
    t = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                              caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=8,
                              dual_attention_layers=(0,))
    lora.add_lora(t, lora.LoraOptions(rank=2, alpha=4))
    names = list(lora.adapter_params(t, "default"))
    assert any(".attn.to_q." in n for n in names)
    assert not any("attn2" in n for n in names)
    assert any("attn2" in n for n, _ in t.named_modules())


def test_soft_update_and_ema_arithmetic_exact(policy):
    t = policy.transformer
    lora.add_lora(t, lora.LoraOptions(rank=4, alpha=8), seed=0)
    _perturb(t, lora.TRAINABLE, seed=1)
    old0 = {k: v.detach().clone() for k, v in lora.adapter_params(t, lora.OLD).items()}
    new = {k: v.detach().clone() for k, v in lora.adapter_params(t, lora.TRAINABLE).items()}
    lora.soft_update(t, 0.25)
    for k, p in lora.adapter_params(t, lora.OLD).items():
        assert torch.allclose(p, 0.25 * old0[k] + 0.75 * new[k], atol=1e-7, rtol=1e-6)
    lora.copy_adapter(t, lora.TRAINABLE, lora.OLD)
    assert all(torch.equal(p, new[k]) for k, p in lora.adapter_params(t, lora.OLD).items())

    ema = lora.EMA(t)
    _perturb(t, lora.TRAINABLE, seed=2)
    live = {k: v.detach().clone() for k, v in lora.adapter_params(t, lora.TRAINABLE).items()}
    ema.update(0.9)
    for k in live:
        assert torch.allclose(ema.shadow[k], 0.9 * new[k] + 0.1 * live[k], atol=1e-7, rtol=1e-6)
    with ema.swapped_in():
        assert all(torch.equal(p, ema.shadow[k]) for k, p in lora.adapter_params(t, lora.TRAINABLE).items())
    assert all(torch.equal(p, live[k]) for k, p in lora.adapter_params(t, lora.TRAINABLE).items())
    assert [lora.ema_decay(s) for s in (0, 1, 80, 1000)] == pytest.approx([0.1, 2 / 11, 81 / 90, 0.9])
