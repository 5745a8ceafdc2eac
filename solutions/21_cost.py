"""Solutions to the exercises of chapter 21 (cost). Try them yourself first: nbs/8_money/21_cost.ipynb."""


def my_param_count(spec):
    "The exact number of parameters of `spec` (a llm_lab.cost.ModelSpec)."
    d, ff, V = spec.d_model, spec.d_ff, spec.vocab_size
    q, kv = spec.n_head * spec.head_dim, spec.n_kv_head * spec.head_dim      # query width, key (= value) width
    attn = d * q + 2 * d * kv + q * d                                         # Wq, Wk, Wv, Wo
    if spec.bias: attn += q + 2 * kv + d
    n_mats = 3 if spec.glu else 2                                             # gate + up + down, or up + down
    mlp = n_mats * d * ff
    if spec.bias: mlp += (2 * ff if spec.glu else ff) + d
    norm = 2 * d if spec.norm_bias else d                                     # weight (+ bias)
    block = attn + mlp + 2 * norm
    emb = V * d + (spec.context_len * d if spec.pos == 'learned' else 0)
    head = 0 if spec.tie_embeddings else V * d
    return spec.n_layer * block + norm + emb + head


def my_train_flops_per_token(spec, seq_len):
    "Training (forward + backward) matmul FLOPs per token of `spec` at context `seq_len`."
    d, T = spec.d_model, seq_len
    q, kv = spec.n_head * spec.head_dim, spec.n_kv_head * spec.head_dim
    per_layer = (2 * d * (q + 2 * kv)       # x @ [Wq Wk Wv]
                 + 2 * T * q                # Q @ K^T against T keys
                 + 2 * T * q                # softmax @ V
                 + 2 * q * d                # @ Wo
                 + 2 * d * spec.d_ff * (3 if spec.glu else 2))
    forward = spec.n_layer * per_layer + 2 * d * spec.vocab_size   # + the output head
    return 3.0 * forward                                            # backward = 2 forwards


def my_training_memory(spec, micro_batch):
    "Bytes per GPU for a GPT-2-style spec: bf16 mixed precision, AdamW, no sharding, no recomputation, dropout."
    n = my_param_count(spec)
    s, b, h, a = spec.context_len, micro_batch, spec.d_model, spec.n_head
    per_layer = s * b * h * (34 + 5 * a * s / h)   # Korthikanti et al. 2022, eq. 2 (bf16 activations, dropout masks)
    logits = 4 * s * b * spec.vocab_size             # fp32 logits for the loss
    return {'weights': 2 * n, 'gradients': 2 * n, 'master': 4 * n, 'optimizer': 8 * n,
            'activations': spec.n_layer * per_layer + logits}


CHECKS = {'my_param_count': 'llm_lab.cost:check_param_count',
          'my_train_flops_per_token': 'llm_lab.cost:check_train_flops_per_token',
          'my_training_memory': 'llm_lab.cost:check_training_memory'}
