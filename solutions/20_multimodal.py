"""Solutions to the exercises of chapter 20 (Multimodal fusion), nbs/7_multimodal/20_multimodal.ipynb.

Each function has the name of the stub it solves; `CHECKS` maps it to its checker in `llm_lab.multimodal`.
Try the exercise before reading on."""
import math

import torch
import torch.nn.functional as F

CHECKS = {
    'my_patchify': 'llm_lab.multimodal:check_patchify',
    'my_clip_loss': 'llm_lab.multimodal:check_clip_loss',
    'my_gated_cross_attention': 'llm_lab.multimodal:check_gated_cross_attention',
}


def my_patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    "(B, C, H, W) -> (B, N, C·p·p): non-overlapping patches, row by row, each flattened channel-major."
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p)          # split each side into (patch index, pixel within the patch)
    x = x.permute(0, 2, 4, 1, 3, 5)                          # (B, rows, cols, C, p, p): patches row by row, pixels channel-major
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def my_clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    "Symmetric InfoNCE over an (N, N) matrix of scaled image–text similarities (matching pairs on the diagonal)."
    targets = torch.arange(len(logits_per_image))            # image i matches caption i
    image_to_text = F.cross_entropy(logits_per_image, targets)      # each row: which caption is this image's?
    text_to_image = F.cross_entropy(logits_per_image.T, targets)    # each column: which image is this caption's?
    return (image_to_text + text_to_image) / 2


def my_gated_cross_attention(x: torch.Tensor, image: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
                             w_o: torch.Tensor, gate: torch.Tensor, n_head: int) -> torch.Tensor:
    "Flamingo's gated cross-attention (no norms, no MLP): x + tanh(gate) · MultiHead(x → image)."
    B, T, d = x.shape
    D = d // n_head
    def heads(t): return t.reshape(B, -1, n_head, D).transpose(1, 2)     # (B, L, d) -> (B, H, L, D)
    q, k, v = heads(x @ w_q.T), heads(image @ w_k.T), heads(image @ w_v.T)   # queries from the text, keys/values from the image
    w = (q @ k.transpose(-2, -1) / math.sqrt(D)).softmax(-1)             # (B, H, T, N): no mask
    o = (w @ v).transpose(1, 2).reshape(B, T, d) @ w_o.T                 # merge the heads, project
    return x + torch.tanh(gate) * o                                      # a closed gate (0) leaves x unchanged
