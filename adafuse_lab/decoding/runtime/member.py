"""A member's committed text for the prompts of one batch: token ids per prompt, the logits
after them, the prefill, and re-tokenization at the boundary when text is appended.

Text is the unit all members share; each member keeps its own tokens of it. Appending text
re-tokenizes a window of the last few committed tokens together with the new text, so the
boundary is what it would be in the committed text (leading space included).
"""
from __future__ import annotations

import bisect
import time

import numpy as np
import torch
from transformers import DynamicCache

from ...session import ModelSession
from ..scoring import eos_tensor
from .counters import COUNTS, gpu_time, gpu_timer
from .kv import KVCache


def on_device(data, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host data (lists of numbers) as a tensor on `device`, without waiting for the work queued there.

    torch.tensor(data, device="cuda") copies from pageable memory, which first waits for every
    kernel already queued, the member's last forward included (the GPU profile put 8.2 of 14.1 s
    there; BENCHMARKS.md). Staged in pinned memory and copied without blocking, the copy is queued
    behind that work instead."""
    t = torch.from_numpy(np.asarray(data, dtype=_NUMPY.get(dtype)))  # 4x faster than torch.tensor on nested lists
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def on_device_many(lists, device, dtype: torch.dtype = torch.long) -> list[torch.Tensor]:
    """Several flat lists as tensors on `device`, through one host-to-device copy (each copy costs
    the host a pinned staging buffer and a queued transfer; a step makes dozens of them)."""
    sizes = [len(x) for x in lists]
    flat = [v for x in lists for v in x]
    return list(on_device(flat, device, dtype).split(sizes))


class HostCopy:
    """A device tensor's values on their way to the host: the copy is queued now, behind the
    work already queued (not behind what is queued later); tolist() waits for it alone."""

    def __init__(self, t: torch.Tensor):
        if t.device.type != "cuda":  # a copy all the same: the values as they are now
            self.host, self.done = t.clone(), None
            return
        self.host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        self.host.copy_(t, non_blocking=True)
        self.done = torch.cuda.Event()
        self.done.record()

    def wait(self) -> torch.Tensor:
        """The values, on the host, once copied."""
        if self.done is not None:
            self.done.synchronize()
        return self.host

    def tolist(self) -> list:
        return self.wait().tolist()


_NUMPY = {None: None, torch.long: np.int64, torch.int32: np.int32, torch.bool: np.bool_, torch.float32: np.float32}


class Member:
    """A session plus its committed text for the prompts of one batch, and its KV cache."""

    def __init__(self, session: ModelSession, prompts: list[str], window_tokens: int = 8, extra_columns: int = 0,
                 make_kv=KVCache):
        self.s = session
        self.window = window_tokens
        self.eos = set(session.eos_token_ids)
        self.eos_t = eos_tensor(self.eos, session.device)
        self.forwards = 0
        ids = [session.encode_prompt(p) for p in prompts]
        if any(len(x) == 0 for x in ids):
            raise ValueError(f"{session.name}: an empty prompt has no tokens to condition on")
        self.ids = ids                              # committed token ids per prompt
        self.prompt_len = [len(x) for x in ids]
        self._windows: dict[int, tuple] = {}        # prompt -> cached re-tokenization window
        # make_kv(prefill, committed, pos, extra): the fixed-width cache (a Reuse hands over a held one)
        self.kv, self.last_logits = self._prefill(ids, extra_columns, make_kv)  # logits after the committed text

    @torch.inference_mode()
    def _prefill(self, ids: list[list[int]], extra: int, make_kv) -> tuple[KVCache, torch.Tensor]:
        """One forward over the left-padded prompts (every prompt's last token in the last column),
        through the model's own attention; then the cache becomes fixed-width columns."""
        s, dev = self.s, self.s.device
        start = time.perf_counter()
        # its GPU time is read later: a device-wide wait here would stall the batches in flight
        timer = gpu_timer(dev)
        width = max(len(x) for x in ids)
        tok = torch.full((len(ids), width), s.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(tok)
        for i, x in enumerate(ids):
            tok[i, width - len(x):] = torch.tensor(x)
            mask[i, width - len(x):] = 1
        tok, mask = tok.to(dev), mask.to(dev)
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        cache = DynamicCache()
        out = s.model(input_ids=tok, attention_mask=mask, position_ids=pos, past_key_values=cache,
                      use_cache=True, logits_to_keep=1)
        self.forwards += 1
        logits = out.logits[:, -1].to(dev).float()
        kv = make_kv(cache, mask, pos, extra)
        COUNTS[id(s.model), "forwards"] += 1
        if timer:
            gpu_time(id(s.model), "prefill_s", timer)
        else:
            COUNTS[id(s.model), "prefill_s"] += time.perf_counter() - start
        return kv, logits

    def text_after(self, row: int, new: list[int]) -> str:
        """Text of `new` tokens as they read after row's committed ids (keeps leading spaces)."""
        return self.text_after_ids(self.ids[row], new)

    def answer_tokens(self, row: int) -> int:
        return len(self.ids[row]) - self.prompt_len[row]

    def retokenize(self, row: int, text: str, eos: bool, bare: bool = False) -> tuple[list[int], int, int]:
        """Committed ids of `row` with `text` appended, tokenized as the joined text would be.

        Only a window of the last few committed tokens is re-tokenized together with
        `text`, so the boundary is what it would be in the committed text (leading
        space included; "\n" + "\n" may merge). Returns (new_ids, keep, first_scored):
        new_ids[:keep] equal the committed ids, new_ids[first_scored:] carry `text` (and EOS).
        `bare` (the official code's cross-scoring): `text` without its leading whitespace,
        tokenized on its own, after the committed ids as they are.
        """
        ws, after, keep, first = self.retokenize_tails([(row, text, eos, bare)])[0]
        return self.ids[row][:ws] + after, keep, first

    def retokenize_tails(self, items: list[tuple[int, str, bool, bool]]) -> list[tuple[int, list[int], int, int]]:
        """retokenize() of many (row, text, eos, bare), with one call to the tokenizer, each as
        (ws, after, keep, first_scored) with new_ids = committed ids[:ws] + after: the
        committed prefix, some thousand ids, is not copied for every candidate."""
        plans, strings = [], []
        for row, text, eos, bare in items:
            ws, window_text = (len(self.ids[row]), "") if bare else self._window(row, self.ids[row])
            plans.append((row, ws, len(window_text), eos, bare))
            strings.append(text.lstrip() if bare else window_text + text)
        out = []
        encoded = self._encode_first(strings, [head for _, _, head, _, _ in plans])
        for (row, ws, head, eos, bare), (tail, first) in zip(plans, encoded):
            # an ending is fed as one EOS id; scoring reads it as "any EOS id" (scoring.token_log_probs)
            after = tail + [min(self.eos)] if eos else tail
            if bare:
                out.append((ws, after, ws, ws))
                continue
            ids, keep = self.ids[row], ws  # ids[:ws] are kept as they are: compare only the window
            for a, b in zip(after, ids[ws:]):
                if a != b:
                    break
                keep += 1
            out.append((ws, after, keep, ws + first))
        return out

    def _window(self, row: int, ids: list[int]) -> tuple[int, str]:
        """Start and text of the re-tokenized window; the same for every candidate of a round."""
        key = (id(ids), len(ids))
        hit = self._windows.get(row)
        if hit is None or hit[0] != key:
            ws = self._window_start(ids)
            hit = (key, ws, self.text_after_ids(ids[:ws], ids[ws:]))
            self._windows[row] = hit
        return hit[1], hit[2]

    def _encode_first(self, texts: list[str], heads: list[int]) -> list[tuple[list[int], int]]:
        """Ids of each text and the index of its first token that ends after character heads[i]
        (len(ids) if none), in one batch from the Rust tokenizer when there is one (it spreads
        the batch over threads). Token ends do not decrease, so a bisection asks for a few
        tokens' characters instead of turning every offset into Python."""
        backend = getattr(self.s.tokenizer, "backend_tokenizer", None)
        if backend is None:
            out = []
            for text, head in zip(texts, heads):
                enc = self.s.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                ends = [end for _, end in enc["offset_mapping"]]
                out.append((enc["input_ids"], bisect.bisect_right(ends, head)))
            return out
        out = []
        for head, e in zip(heads, backend.encode_batch(texts, add_special_tokens=False)):
            end = lambda i, e=e: (e.token_to_chars(i) or e.offsets[i])[1]
            out.append((e.ids, bisect.bisect_right(range(len(e.ids)), head, key=end)))
        return out

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
