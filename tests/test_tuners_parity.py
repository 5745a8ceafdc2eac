"""Chapter 13 against Hugging Face `peft`: every method peft implements gives the same logits (<= 1e-5, float32) on the same
tiny GPT-2 / Llama weights and the same adapter weights; merged LoRA weights are equal; LoRA adapters travel both ways in
peft's on-disk format. All models are created locally: nothing is downloaded."""
import torch, pytest
from conftest import require
from llm_lab.model import GPT, GPTConfig
from llm_lab.tuners import (apply_tuner, LoraConfig, IA3Config, AdaLoraConfig, PromptTuningConfig, PTuningConfig, PrefixConfig,
                            DeepPromptConfig, LlamaAdapterConfig, LoraLinear, IA3Linear, SVDLinear, merge_lora, hf_module_name,
                            save_hf_gpt2, save_peft_lora, load_peft_lora)

TOL = 1e-5
X = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope='module')
def gpt2_dir(tmp_path_factory):
    transformers = require('transformers')
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    folder = tmp_path_factory.mktemp('gpt2')
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


def hf_gpt2(folder):
    return require('transformers').GPT2LMHeadModel.from_pretrained(folder).eval()


def ours(folder):
    return GPT.from_pretrained(folder).eval()


def randomize(module, names, seed=0):
    "Give adapter parameters random values (peft and we both initialise some of them to zero or one)."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if any(k in n for k in names): p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if 'ia3' in n else 0.0))


def peft_layer(pm, our_name, config):
    return pm.base_model.model.get_submodule(hf_module_name(our_name, config))


def close(a, b):
    err = (a - b).abs().max().item()
    assert err <= TOL, err
    return err


def test_base_models_agree(gpt2_dir):
    close(ours(gpt2_dir)(X)[0], hf_gpt2(gpt2_dir)(X).logits)


def test_lora_import_forward_and_merge(gpt2_dir, tmp_path):
    peft = require('peft')
    pm = peft.get_peft_model(hf_gpt2(gpt2_dir), peft.LoraConfig(r=4, lora_alpha=8, target_modules=['c_attn', 'mlp.c_fc'],
                                                                 fan_in_fan_out=True, task_type='CAUSAL_LM')).eval()
    randomize(pm, ['lora_A', 'lora_B'])
    pm.save_pretrained(tmp_path)
    model = load_peft_lora(ours(gpt2_dir), tmp_path)
    assert {n.rsplit('.', 1)[-1] for n, m in model.named_modules() if isinstance(m, LoraLinear)} == {'qkv_proj', 'up_proj'}
    want = pm(input_ids=X).logits
    assert (want - hf_gpt2(gpt2_dir)(X).logits).abs().max() > 1e-2  # the adapter changes the output
    close(model(X)[0], want)
    merged_hf, merged = pm.merge_and_unload(), merge_lora(model)
    for name in ('blocks.0.attn.qkv_proj', 'blocks.1.mlp.up_proj'):
        close(merged.get_submodule(name).weight, merged_hf.get_submodule(hf_module_name(name, model.config)).weight.T)
    close(merged(X)[0], want)


def test_lora_export_loads_in_peft(gpt2_dir, tmp_path):
    peft = require('peft'); transformers = require('transformers')
    model = apply_tuner(ours(gpt2_dir), LoraConfig(r=4, alpha=8, targets=('qkv_proj', 'o_proj', 'down_proj')))
    randomize(model, ['lora_A', 'lora_B'])
    save_hf_gpt2(model.eval(), tmp_path / "base")  # the base weights under the LoRA layers
    save_peft_lora(model, tmp_path / 'adapter', base_model_name_or_path=str(tmp_path / 'base'))
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'base').eval()
    pm = peft.PeftModel.from_pretrained(hf, tmp_path / 'adapter').eval()
    close(pm(input_ids=X).logits, model(X)[0])


def test_ia3(gpt2_dir):
    peft = require('peft')
    pm = peft.get_peft_model(hf_gpt2(gpt2_dir), peft.IA3Config(target_modules=['c_attn', 'mlp.c_proj'], feedforward_modules=['mlp.c_proj'],
                                                                task_type='CAUSAL_LM')).eval()
    randomize(pm, ['ia3_l'])
    model = apply_tuner(ours(gpt2_dir), IA3Config(targets=('qkv_proj', 'down_proj'), feedforward=('down_proj',)))
    for n, m in model.named_modules():
        if isinstance(m, IA3Linear): m.ia3_l.data.copy_(peft_layer(pm, n, model.config).ia3_l['default'].flatten())
    want = pm(input_ids=X).logits
    close(model(X)[0], want)
    for m in model.modules():
        if isinstance(m, IA3Linear): m.merge()
    close(model(X)[0], want)


def test_adalora(gpt2_dir):
    peft = require('peft')
    pm = peft.get_peft_model(hf_gpt2(gpt2_dir), peft.AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, total_step=10,
                                                                    target_modules=['c_attn'], task_type='CAUSAL_LM')).eval()
    randomize(pm, ['lora_A', 'lora_B', 'lora_E'])
    model = apply_tuner(ours(gpt2_dir), AdaLoraConfig(init_r=4, target_r=2, alpha=8, targets=('qkv_proj',), total_step=10, tinit=1, tfinal=1))
    for n, m in model.named_modules():
        if isinstance(m, SVDLinear):
            p = peft_layer(pm, n, model.config)
            for k in ('lora_A', 'lora_B', 'lora_E'): getattr(m, k).data.copy_(getattr(p, k)['default'])
    close(model(X)[0], pm(input_ids=X).logits)


def _prompt_parity(gpt2_dir, peft_config, our_config, copy):
    pm = require('peft').get_peft_model(hf_gpt2(gpt2_dir), peft_config).eval()
    randomize(pm, ['prompt_encoder'])
    model = apply_tuner(ours(gpt2_dir), our_config).eval()
    copy(pm.prompt_encoder['default'], model.encoder)
    want = pm(input_ids=X).logits
    return close(model(X)[0], want[:, -X.shape[1]:])


def test_prompt_tuning(gpt2_dir):
    peft = require('peft')
    _prompt_parity(gpt2_dir, peft.PromptTuningConfig(num_virtual_tokens=4, task_type='CAUSAL_LM'), PromptTuningConfig(n_virtual=4),
                   lambda p, o: o.embedding.load_state_dict(p.embedding.state_dict()))


def test_p_tuning(gpt2_dir):
    peft = require('peft')
    _prompt_parity(gpt2_dir, peft.PromptEncoderConfig(num_virtual_tokens=4, encoder_hidden_size=16, task_type='CAUSAL_LM'),
                   PTuningConfig(n_virtual=4, hidden=16), lambda p, o: o.load_state_dict(p.state_dict()))


@pytest.mark.parametrize('projection', [True, False])
def test_prefix_tuning(gpt2_dir, projection):
    peft = require('peft')
    pc = peft.PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=projection, encoder_hidden_size=16, task_type='CAUSAL_LM')
    ours_cfg = PrefixConfig(n_virtual=4, hidden=16) if projection else DeepPromptConfig(n_virtual=4)
    _prompt_parity(gpt2_dir, pc, ours_cfg, lambda p, o: o.load_state_dict(p.state_dict()))


def test_llama_adapter():
    transformers = require('transformers'); peft = require('peft')
    torch.manual_seed(0)
    model = GPT(GPTConfig.llama(vocab_size=64, context_len=32, n_layer=2, n_head=4, n_kv_head=2, d_model=32)).eval()
    c = model.config
    hc = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=c.d_ff, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=c.norm_eps, tie_word_embeddings=False,
                                  attention_bias=False, mlp_bias=False, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    hf = transformers.LlamaForCausalLM(hc).eval()
    sd = {hf_module_name(k.rpartition('.')[0], c) + '.weight': v for k, v in model.state_dict().items()}
    hf.load_state_dict(sd, strict=True)
    base_logits = hf(X).logits.detach()
    close(model(X)[0], base_logits)
    pm = peft.get_peft_model(hf, peft.AdaptionPromptConfig(adapter_len=4, adapter_layers=1, task_type='CAUSAL_LM')).eval()
    model = apply_tuner(model, LlamaAdapterConfig(adapter_len=4, adapter_layers=1))
    close(model(X)[0], base_logits)  # zero gate: the adapted model is the base model
    close(pm(input_ids=X).logits, base_logits)
    ad = [m for m in pm.modules() if type(m).__name__ == 'AdaptedAttention'][0]
    with torch.no_grad(): ad.adaption_gate.fill_(0.7)
    mine = model.blocks[-1].attn
    mine.prompt.data.copy_(ad.adaption_prompt); mine.gate.data.copy_(ad.adaption_gate)
    want = pm(input_ids=X).logits
    assert (want - base_logits).abs().max() > 1e-3
    close(model(X)[0], want)
