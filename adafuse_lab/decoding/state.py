"""One member's decoding state for a batch of prompts.

Rows of the KV cache are prompts (or candidates of a prompt). Rows progress
raggedly, so a row's real tokens need not be contiguous: an attention-mask zero
marks a hole (left padding, a pad fed to a row that had nothing to feed, a token
given back after re-tokenization), and explicit position ids count only real
tokens. Holes cost a little memory and save every re-encode.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..session import ModelSession
from .attention import engine_attention
from .scoring import eos_tensor, token_log_probs

# ADAFUSE_BLOCKING_COPIES=1: the copies block as before (to time the difference on one machine)
BLOCKING_COPIES = os.environ.get("ADAFUSE_BLOCKING_COPIES") == "1"


def on_device(data, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host data (lists of numbers) as a tensor on `device`, without waiting for the work queued there.

    torch.tensor(data, device="cuda") copies from pageable memory, which first waits for every
    kernel already queued on the stream, the member's last forward included: the host then
    idles while the GPU works and the GPU idles while the host prepares the next forward (the
    GPU profile put 8.2 of 14.1 s in torch.tensor; BENCHMARKS.md). Staged in pinned memory and
    copied without blocking, the copy is queued behind that work instead; PyTorch's pinned
    allocator keeps the staging buffer alive until the copy has run."""
    t = torch.tensor(data, dtype=dtype)
    if torch.device(device).type != "cuda" or BLOCKING_COPIES:
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@dataclass
class KV:
    cache: DynamicCache
    mask: torch.Tensor    # rows x columns, 1 = real token
    n_real: torch.Tensor  # rows: real tokens so far, the next position id
    pos: torch.Tensor     # rows x columns: the position id each column was fed with

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def forward(self, model, ids: torch.Tensor, in_mask: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        """Append `ids` (rows x T, right-padded where in_mask is 0); return logits rows x T' x V."""
        pos = (self.n_real[:, None] + in_mask.cumsum(1) - 1).clamp_min(0)
        mask = torch.cat([self.mask, in_mask], 1)
        with engine_attention(model):
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=self.cache,
                        use_cache=True, logits_to_keep=logits_to_keep)
        self.mask, self.n_real = mask, self.n_real + in_mask.sum(1)
        self.pos = torch.cat([self.pos, pos], 1)
        return out.logits.to(ids.device)  # a no-op unless the model spans devices (device "auto")

    def select(self, rows: torch.Tensor) -> "KV":
        """A new KV holding copies of `rows` (repeats allowed)."""
        cache = DynamicCache()
        for i, layer in enumerate(self.cache.layers):
            r = rows.to(layer.keys.device)  # no-op unless the member's layers span GPUs (device "auto")
            cache.update(layer.keys.index_select(0, r), layer.values.index_select(0, r), i)
        return KV(cache, self.mask.index_select(0, rows), self.n_real.index_select(0, rows),
                  self.pos.index_select(0, rows))

    def keep_rows(self, rows: torch.Tensor) -> None:
        layers = getattr(self.cache, "layers", None)
        if layers:  # HF's layers index with rows as given, which must be on each layer's device
            for layer in layers:
                keys = getattr(layer, "keys", None)
                layer.batch_select_indices(rows if keys is None else rows.to(keys.device))
        else:  # the column cache (no HF layers) selects on each buffer's device itself
            self.cache.batch_select_indices(rows)
        self.mask, self.n_real = self.mask.index_select(0, rows), self.n_real.index_select(0, rows)
        self.pos = self.pos.index_select(0, rows)

    def hide(self, row: int, columns: list[int]) -> None:
        """Turn real tokens of one row into holes (they were re-tokenized)."""
        if columns:
            self.mask[row, columns] = 0
            self.n_real[row] -= len(columns)


def pad_right(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = on_device([list(s) + [pad] * (width - len(s)) for s in seqs], device, torch.long)
    mask = on_device([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device, torch.long)
    return ids, mask


class Member:
    """A session plus its committed state for the prompts of one batch."""

    def __init__(self, session: ModelSession, prompts: list[str], window_tokens: int = 8):
        self.s = session
        self.window = window_tokens
        self.eos = set(session.eos_token_ids)
        self.eos_t = eos_tensor(self.eos, session.device)
        self.forwards = 0
        ids = [session.encode_prompt(p) for p in prompts]
        if any(len(x) == 0 for x in ids):
            raise ValueError(f"{session.name}: an empty prompt has no tokens to condition on")
        width = max(len(x) for x in ids)
        tok = torch.full((len(ids), width), session.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(tok)
        for i, x in enumerate(ids):  # left padding: every row's last prompt token in the last column
            tok[i, width - len(x):] = torch.tensor(x)
            mask[i, width - len(x):] = 1
        dev = session.device
        empty = torch.zeros((len(ids), 0), dtype=torch.long, device=dev)
        self.kv = KV(DynamicCache(), empty, torch.zeros(len(ids), dtype=torch.long, device=dev), empty)
        with torch.inference_mode():
            logits = self.kv.forward(session.model, tok.to(dev), mask.to(dev), logits_to_keep=1)
        self.forwards += 1
        self.last_logits = logits[:, -1].float()   # predicts the token after the committed text
        self.ids = ids                              # committed token ids per row
        self.cols = [list(range(width - len(x), width)) for x in ids]  # cache column of each id
        self.prompt_len = [len(x) for x in ids]
        self._windows: dict[int, tuple] = {}        # row -> cached re-tokenization window

    # ---- text <-> tokens -------------------------------------------------
    def text_after(self, row: int, new: list[int]) -> str:
        """Text of `new` tokens as they read after row's committed ids (keeps leading spaces)."""
        return self.text_after_ids(self.ids[row], new)

    def keep(self, rows: list[int]) -> None:
        """Keep only these prompts (the others finished)."""
        if rows == list(range(len(self.ids))):
            return
        index = on_device(rows, self.s.device, torch.long)
        self.kv.keep_rows(index)
        self.last_logits = self.last_logits.index_select(0, index)
        self.ids = [self.ids[r] for r in rows]
        self.cols = [self.cols[r] for r in rows]
        self.prompt_len = [self.prompt_len[r] for r in rows]

    def answer_tokens(self, row: int) -> int:
        return len(self.ids[row]) - self.prompt_len[row]

    def retokenize(self, row: int, text: str, eos: bool) -> tuple[list[int], int, int]:
        """Committed ids of `row` with `text` appended, tokenized as the joined text would be.

        Only a window of the last few committed tokens is re-tokenized together with
        `text`, so the boundary is what it would be in the committed text (leading
        space included; "\n" + "\n" may merge). Returns (new_ids, keep, first_scored):
        new_ids[:keep] equal the committed ids, new_ids[first_scored:] carry `text` (and EOS).
        """
        ids = self.ids[row]
        ws, window_text = self._window(row, ids)
        tail, offsets = self._encode_offsets(window_text + text)
        first = next((k for k, (_, end) in enumerate(offsets) if end > len(window_text)), len(tail))
        # an ending is fed as one EOS id; scoring reads it as "any EOS id" (scoring.token_log_probs)
        new = ids[:ws] + tail + ([min(self.eos)] if eos else [])
        keep = ws  # ids[:ws] are kept as they are: compare only the window
        for a, b in zip(new[ws:], ids[ws:]):
            if a != b:
                break
            keep += 1
        return new, keep, ws + first

    def _window(self, row: int, ids: list[int]) -> tuple[int, str]:
        """Start and text of the re-tokenized window; the same for every candidate of a round."""
        key = (id(ids), len(ids))
        hit = self._windows.get(row)
        if hit is None or hit[0] != key:
            ws = self._window_start(ids)
            hit = (key, ws, self.text_after_ids(ids[:ws], ids[ws:]))
            self._windows[row] = hit
        return hit[1], hit[2]

    def _encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and character offsets, straight from the Rust tokenizer when there is one."""
        backend = getattr(self.s.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            enc = backend.encode(text, add_special_tokens=False)
            return enc.ids, enc.offsets
        enc = self.s.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]

    def _starts_char(self, ids: list[int]) -> bool:
        """Do `ids` (ending where a character ends) begin where a character begins?

        A character spread over several tokens (byte fallback, byte-level BPE: CJK,
        emoji, "é") decodes to U+FFFD when cut: byte fallback even turns the whole run
        of byte tokens into U+FFFD. (A literal U+FFFD in the text reads as a cut: the
        caller then just looks one token further.)"""
        return not self.s.decode(ids).startswith("\ufffd")

    def _window_start(self, ids: list[int]) -> int:
        """`window` tokens back (never the first token), moved to a character boundary.

        A UTF-8 character is at most 4 bytes, so a boundary is at most 3 tokens back;
        failing that (the first character is split, or U+FFFD), the next one forward.
        The end of the committed ids is always a boundary."""
        start = max(1, len(ids) - self.window)
        for ws in [*range(start, max(0, start - 4), -1), *range(start + 1, len(ids))]:
            if self._starts_char(ids[ws:]):
                return ws
        return len(ids)

    def text_after_ids(self, before: list[int], after: list[int]) -> str:
        """Text of `after` as it reads following `before` (keeps its leading space)."""
        a = max(0, len(before) - 4)
        for _ in range(3):  # start the anchor on a character boundary too
            if a == 0 or self._starts_char(before[a:]):
                break
            a -= 1
        anchor = before[a:]
        head = self.s.decode(anchor)
        full = self.s.decode(anchor + after)
        return full[len(head):] if full.startswith(head) else self.s.decode(after)

    # ---- scoring and committing ------------------------------------------
    @torch.inference_mode()
    def score(self, rows: list[int], texts: list[str], eos: list[bool], inplace: bool = False) -> "Scored":
        """Mean token NLL of each text appended to its row's committed text, in one
        batched forward over copies of the rows' caches (or the cache itself when
        `inplace`, one text per row, to commit). The result can commit one scored
        text per row without another forward."""
        plan = []
        for r, t, e in zip(rows, texts, eos):
            new, keep, first = self.retokenize(r, t, e)
            n = len(self.ids[r])
            start = n if keep == n else keep - 1  # re-feed one kept token to get the logits after it
            plan.append((r, new, start, first))
        dev = self.s.device
        kv = self.kv if inplace else self.kv.select(on_device(rows, dev, torch.long))
        for i, (r, new, start, _) in enumerate(plan):
            kv.hide(i, self.cols[r][start:])
        fed = [new[start:] for _, new, start, _ in plan]
        width0 = kv.width
        ids, in_mask = pad_right(fed, self.s.pad_token_id, dev)
        logits = kv.forward(self.s.model, ids, in_mask)
        self.forwards += 1
        # Gather log p(token j | tokens < j) for every scored token: from the fed logits,
        # or from last_logits for the first new token when nothing was re-fed.
        src_row, src_pos, tok, seg, from_last = [], [], [], [], []
        for i, (r, new, start, first) in enumerate(plan):
            for j in range(first, len(new)):
                prev = j - 1 - start
                from_last.append(prev < 0)
                src_row.append(r if prev < 0 else i)
                src_pos.append(max(prev, 0))
                tok.append(new[j])
                seg.append(i)
        nll = torch.zeros(len(plan), device=dev)
        count = torch.zeros(len(plan), device=dev)
        if tok:
            as_t = lambda x: on_device(x, dev)
            src_row, src_pos, tok, seg, from_last = map(as_t, (src_row, src_pos, tok, seg, from_last))
            fed_lp = _log_probs(logits, src_row.clamp_max(logits.shape[0] - 1) * ~from_last, src_pos, tok, self.eos_t)
            last_lp = token_log_probs(self.last_logits[src_row * from_last], tok, self.eos_t)
            lp = torch.where(from_last, last_lp, fed_lp)
            nll.index_add_(0, seg, -lp)
            count.index_add_(0, seg, torch.ones_like(lp))
        nll = torch.where(count > 0, nll / count.clamp_min(1), torch.full_like(nll, float("nan")))
        last_pos = on_device([len(f) - 1 for f in fed], dev)
        last = logits[torch.arange(len(plan), device=dev), last_pos].float()
        return Scored(self, kv, plan, width0, last, nll.tolist(), [len(f) for f in fed])


def _log_probs(logits: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor,
               eos: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """log_softmax(logits[rows, pos])[tok], normalising only the positions asked for, `chunk`
    positions at a time: rerank at batch 256 scores about 49k tokens, whose float32 rows over a
    152k vocabulary alone took 27.7 GiB and ran an H100 out of memory (lease 5)."""
    out = []
    for s in range(0, len(tok), chunk):
        out.append(token_log_probs(logits[rows[s:s + chunk], pos[s:s + chunk]], tok[s:s + chunk], eos))
    return torch.cat(out)


@dataclass
class Scored:
    member: Member
    kv: KV
    plan: list            # (row, new_ids, start, first_scored) per scored text
    width0: int           # cache width before the fed tokens
    last: torch.Tensor    # logits after each scored text
    nll: list[float]      # mean token NLL per scored text
    fed: list[int]        # tokens fed per scored text

    def commit(self, winners: list[int]) -> None:
        """winners[row] = index into the scored texts; that text becomes the committed text."""
        m = self.member
        pick = on_device(winners, m.s.device, torch.long)
        if winners != list(range(len(self.plan))):
            self.kv.keep_rows(pick)
        for row, w in enumerate(winners):
            r, new, start, _ = self.plan[w]
            assert r == row, "a winner must come from its own row"
            m.ids[row] = new
            m.cols[row] = m.cols[r][:start] + list(range(self.width0, self.width0 + len(new) - start))
        m.kv = self.kv
        m.last_logits = self.last.index_select(0, pick)
