"""Log-probabilities of scored tokens, with the one rule for an ending.

An ending is scored by the member's probability of ending there: the summed probability of
all of its EOS ids (Qwen instruct members end with <|im_end|> but also list <|endoftext|>,
which they almost never predict after an answer; scoring either one alone misjudges endings).
"""
from __future__ import annotations

import torch


def eos_tensor(eos_ids, device) -> torch.Tensor:
    return torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)


def token_log_probs(logits: torch.Tensor, tok: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """log p(tok) under each row of `logits` (N x V); where tok is an EOS id, log p(any EOS id)."""
    logits = logits.float()
    lse = torch.logsumexp(logits, -1)
    own = logits.gather(-1, tok[:, None])[:, 0]
    if eos.numel() == 0:
        return own - lse
    ending = torch.logsumexp(logits.index_select(-1, eos), -1)
    return torch.where(torch.isin(tok, eos), ending, own) - lse
