"""Solutions to the exercises of chapter 12 (Fine-tuning), nbs/4_adaptation/12_finetuning.ipynb.

Each function has the name of the stub it solves; `CHECKS` maps it to its checker in `llm_lab.finetune`.
Try the exercise before reading on."""
import torch
import torch.nn.functional as F

CHECKS = {
    'my_sft_loss': 'llm_lab.finetune:check_sft_loss',
    'my_last_token_pool': 'llm_lab.finetune:check_last_token_pool',
    'my_packing_mask': 'llm_lab.finetune:check_packing_mask',
}


def my_sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    "Mean next-token cross-entropy over positions whose label is not -100 (labels aligned with inputs)."
    pred = logits[:, :-1]                      # position t predicts token t+1...
    target = labels[:, 1:]                     # ...so drop the first label and the last prediction
    keep = target != -100                      # the reply tokens
    nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target.clamp_min(0).reshape(-1), reduction='none')
    return (nll * keep.reshape(-1)).sum() / keep.sum()   # mean over labelled tokens only


def my_last_token_pool(hidden: torch.Tensor, input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    "(B, d): the hidden state of the last token of each row that is not pad_id."
    B, T = input_ids.shape
    real = input_ids != pad_id                                   # (B, T)
    last = (torch.arange(T) * real).argmax(-1)                   # the largest position holding a real token
    return hidden[torch.arange(B), last]                         # (B, d)


def my_packing_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    "Bool (N, T, T): causal, and only within the same packed document."
    T = doc_ids.shape[-1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]        # (N, T, T): query i and key j in one example
    causal = torch.ones(T, T, dtype=torch.bool).tril()           # key j not after query i
    return same_doc & causal
