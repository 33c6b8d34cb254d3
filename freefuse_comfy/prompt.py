"""The prompt's T5 tokens, with character offsets, carried on the conditioning.

Flux's text tokens are the T5 tokens of the prompt, in order: text token `t` of the model is T5
token `t` (method step 1). ComfyUI tokenizes each weighted segment of a prompt such as
`a photo of (alice:1.2)` separately; this module does the same with offsets, joins the segments'
text, and checks that its token ids equal the ids ComfyUI itself encoded. The result rides on the
conditioning under `PROMPT_KEY`, so the user types the prompt once and nodes downstream (Flux
Guidance, ControlNet Apply, ...) carry it along with the conditioning.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..freefuse_core import TokenPiece
from .host import sd1_clip

PROMPT_KEY = "freefuse_prompt"
ENCODE_NODE = "FreeFuse Text Encode"


@dataclass(frozen=True)
class PromptTokens:
    text: str                          # the prompt as tokenized (weight syntax removed)
    pieces: tuple[TokenPiece, ...]     # one per T5 token, padding included


def _t5_tokenizer(clip):
    t5 = getattr(clip.tokenizer, "t5xxl", None)
    if t5 is None or getattr(t5, "tokenizer", None) is None:
        raise ValueError(f"{ENCODE_NODE}: input 'clip' has no T5 tokenizer. Load Flux's text encoders "
                         "(clip_l and t5xxl) with 'DualCLIPLoader', type 'flux'.")
    return t5


def prompt_tokens(clip, text: str, t5_ids: list[int]) -> PromptTokens:
    """T5 pieces of `text` with offsets, checked against the ids ComfyUI encoded (`t5_ids`)."""
    t5 = _t5_tokenizer(clip)
    joined, pieces = "", []
    for segment, _weight in sd1_clip.token_weights(sd1_clip.escape_important(text), 1.0):
        segment = sd1_clip.unescape_important(segment)
        enc = t5.tokenizer(segment, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if t5.tokenizer_adds_end_token:
            ids, offsets = ids[:-1], offsets[:-1]
        for token_id, (start, end) in zip(ids, offsets):
            pieces.append((token_id, TokenPiece(segment[start:end], len(joined) + start, len(joined) + end)))
        joined += segment
    ids = [i for i, _ in pieces]
    if ids != t5_ids[:len(ids)] or any(isinstance(i, int) and i != t5.pad_token for i in t5_ids[len(ids) + 1:]):
        raise ValueError(f"{ENCODE_NODE}: the T5 tokens of this prompt could not be matched to their text "
                         "(textual-inversion embeddings or a custom tokenizer?). Remove embeddings from "
                         "the prompt.")
    tail = [TokenPiece("", len(joined), len(joined))] * (len(t5_ids) - len(ids))
    return PromptTokens(text=joined, pieces=tuple(p for _, p in pieces) + tuple(tail))


def encode(clip, text: str):
    """CLIPTextEncode's conditioning, with the prompt's T5 tokens attached under PROMPT_KEY."""
    if clip is None:
        raise ValueError(f"{ENCODE_NODE}: input 'clip' is not connected. Connect a Flux CLIP "
                         "(DualCLIPLoader, type 'flux').")
    tokens = clip.tokenize(text)
    t5_batches = tokens.get("t5xxl") if isinstance(tokens, dict) else None
    if not t5_batches:
        _t5_tokenizer(clip)
        raise ValueError(f"{ENCODE_NODE}: input 'clip' gave no T5 tokens for this prompt; use Flux's text encoders.")
    t5_ids = [t[0] for batch in t5_batches for t in batch]
    meta = prompt_tokens(clip, text, t5_ids)
    return clip.encode_from_tokens_scheduled(tokens, add_dict={PROMPT_KEY: meta})


def prompt_of(conditioning, node: str) -> PromptTokens:
    """The one prompt carried by a positive conditioning, or an error naming the fix."""
    found = {id(c[1].get(PROMPT_KEY)): c[1].get(PROMPT_KEY) for c in conditioning}
    if None in found.values() or not found:
        raise ValueError(f"{node}: input 'positive' carries no prompt tokens. Encode the prompt with "
                         f"'{ENCODE_NODE}' instead of 'CLIP Text Encode', so FreeFuse can find each "
                         "LoRA's activation words in it.")
    texts = {p.text for p in found.values()}
    if len(texts) > 1:
        raise ValueError(f"{node}: input 'positive' combines {len(texts)} different prompts; FreeFuse "
                         "needs one prompt that names every subject. Use one FreeFuse Text Encode.")
    return next(iter(found.values()))
