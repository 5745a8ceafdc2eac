"""Solutions to chapter 17's exercises (nbs/6_efficiency/17_compression.ipynb): per-group int4 quantisation, GPTQ's column
update, an N:M sparsity mask and the distillation loss. Each has the name of the stub it solves; CHECKS maps it to its checker."""
import torch
import torch.nn.functional as F


def my_quantize_int4(w: torch.Tensor, group_size: int) -> torch.Tensor:
    "Per-group absmax int4: every group_size consecutive inputs of a row share one scale; returns the dequantised weights."
    groups = w.reshape(-1, group_size)                                     # (out·in/g, g)
    scale = groups.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 7    # symmetric: codes −7..7, so 0 stays exactly 0
    codes = (groups / scale).round().clamp(-7, 7)                          # round to nearest, never truncate
    return (codes * scale).reshape(w.shape)


def my_gptq(w: torch.Tensor, H: torch.Tensor, bits: int) -> torch.Tensor:
    "GPTQ with one absmax scale per row (from the original weights), columns quantised left to right."
    W = w.clone()
    qmax = 2 ** (bits - 1) - 1
    scale = W.abs().amax(dim=1).clamp_min(1e-12) / qmax                    # (out,)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)             # H⁻¹ = UᵀU; row i of U = the updates after eliminating 0..i-1
    for i in range(W.shape[1]):
        q = (W[:, i] / scale).round().clamp(-qmax, qmax) * scale           # round this column to the grid
        err = (W[:, i] - q) / U[i, i]                                      # its error, in units of the optimal update
        W[:, i] = q
        W[:, i + 1:] -= err[:, None] * U[i, i + 1:][None, :]               # the columns not yet quantised absorb it
    return W


def my_nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    "Keep the n largest scores in every group of m consecutive inputs of each row."
    out, k = scores.shape
    groups = scores.reshape(out, k // m, m)                                # (out, k/m, m)
    keep = groups.topk(n, dim=-1).indices
    return torch.zeros_like(groups).scatter_(-1, keep, 1.0).reshape(out, k)


def my_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    "T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over all positions."
    V = student_logits.shape[-1]
    log_s = F.log_softmax(student_logits.reshape(-1, V) / T, dim=-1)       # (N, V)
    log_t = F.log_softmax(teacher_logits.reshape(-1, V) / T, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean()                   # KL(teacher ‖ student) per position, averaged
    return kl * T * T                                                      # T² keeps the gradient scale independent of T


CHECKS = {'my_quantize_int4': 'llm_lab.compress:check_group_int4',
          'my_gptq': 'llm_lab.compress:check_gptq',
          'my_nm_mask': 'llm_lab.compress:check_nm_mask',
          'my_distill_loss': 'llm_lab.compress:check_distill_loss'}
