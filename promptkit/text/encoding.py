"""Turn rendered templates into token ids, soft-slot ids, mask positions and word ids, and
text answers into the tokens a generator learns."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from transformers import PreTrainedTokenizerBase

from promptkit.errors import ConfigError, DataWarning, TemplateError
from promptkit.text.template import Segment, SegmentKind, Template

Answers = Literal["inline", "decoder"]
SENTINEL = "<extra_id_0>"


@dataclass(frozen=True)
class EncodedPrompt:
    """One example, ready to collate.

    ``slot_ids`` is -1 for a real token, else the soft-slot index whose vector replaces it;
    ``word_ids`` is -1 outside input slots, else the index of the input word the token is from;
    ``mask_position`` is where the answer is read (-1 if the template has no [MASK]). A text
    answer to learn sits at the end of ``input_ids`` from ``answer_start`` on (a decoder-only
    model), or in ``target_ids`` (the decoder's, for an encoder-decoder); both end with the
    end token.
    """

    input_ids: list[int]
    slot_ids: list[int]
    word_ids: list[int]
    mask_position: int
    answer_start: int = -1
    target_ids: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def answer_length(self) -> int:
        """How many answer tokens (the end token included) the example carries."""
        inline = len(self.input_ids) - self.answer_start if self.answer_start >= 0 else 0
        return inline + len(self.target_ids)


def fit_lengths(lengths: Sequence[int], budget: int) -> list[int]:
    """Shorten the longest lengths first until they sum to at most ``budget``."""
    if sum(lengths) <= budget:
        return list(lengths)
    ordered = sorted(lengths)
    # Find the cap c such that sum(min(l, c)) <= budget, as large as possible.
    total, cap = 0, 0
    for i, length in enumerate(ordered):
        remaining = len(ordered) - i
        if total + length * remaining > budget:
            cap = (budget - total) // remaining
            break
        total += length
    capped = [min(length, cap) for length in lengths]
    spare = budget - sum(capped)
    # Hand the remainder out one token at a time, first to the inputs that were cut.
    for i, length in enumerate(lengths):
        if spare and length > cap:
            capped[i] += 1
            spare -= 1
    return capped


class PromptTokenizer:
    """Encodes examples through a template with a tokenizer.

    Args:
        template: the compiled template.
        tokenizer: a Hugging Face tokenizer (fast tokenizers give word ids).
        max_length: the longest sequence; only input slots are truncated, longest first.
        causal: read the answer as a causal LM does: the sequence ends at [MASK] and the
            answer is the next-token prediction of the last token before it (anything after
            [MASK] cannot influence that prediction, so it is not fed).
        soft_positions: soft slots are sequence positions; False for key/value prefixes,
            which take none.
        answers: where text answers go when targets are given: "inline" after the prompt
            (decoder-only models), "decoder" (encoder-decoders), or None (no text answers).

    An input given as a list of words (e.g. NER tokens) is tokenised word by word, each with
    a leading space, so word ids follow the given words, not the tokenizer's own splitting.
    """

    def __init__(
        self,
        template: Template,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 256,
        causal: bool = False,
        soft_positions: bool = True,
        answers: Answers | None = None,
    ) -> None:
        self.template = template
        self.answers = answers
        self.soft_positions = soft_positions
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.causal = causal
        self.prefix, self.suffix = _special_tokens_around(tokenizer)
        if causal:
            self.suffix = []
        self.placeholder_id = next(
            i for i in (tokenizer.unk_token_id, tokenizer.pad_token_id, 0) if i is not None
        )
        self.mask_token_id = mask_token(tokenizer)
        if template.has_mask and not causal and self.mask_token_id is None:
            raise TemplateError(
                f"{template.name} has [MASK] but the tokenizer has no mask token: "
                "use a masked LM, or a causal LM with `kind: causal_lm`."
            )
        if answers and tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has no end token, which a text answer ends with.")
        self._anchor_cache: dict[tuple[str, bool], list[int]] = {}

    def __call__(
        self, examples: Sequence[Mapping[str, object]], targets: Sequence[str] | None = None
    ) -> list[EncodedPrompt]:
        """Encode a batch of examples (tokenising all their pieces in one call); with
        ``targets``, their text answers too."""
        trimmed = [self._trim(self.template.render(ex)) for ex in examples]
        rendered = [segments for segments, _ in trimmed]
        if self.causal and not all(map(_reads_data, rendered)):
            raise TemplateError(
                f"{self.template.name}: a causal LM answers from what comes before [MASK] (or "
                "the end), and no input comes before it, so the answer would never depend on "
                "the data: put <x> before [MASK]."
            )
        pieces = iter(self._encode_inputs([s for segs in rendered for s in segs]))
        self._cache_anchors(rendered)
        answers = self._encode_answers(targets, [space for _, space in trimmed])
        encoded = [
            self._assemble(
                segments,
                [next(pieces) for s in segments if s.kind is SegmentKind.INPUT],
                answer,
            )
            for segments, answer in zip(rendered, answers, strict=True)
        ]
        cut = sum(e.answer_length < len(a) for e, a in zip(encoded, answers, strict=True))
        if cut:
            warnings.warn(
                f"{cut} of {len(encoded)} answers were cut to fit max_length={self.max_length} "
                "(the inputs were cut first): raise max_length to learn them whole.",
                DataWarning,
                stacklevel=2,
            )
        return encoded

    def answered(
        self, examples: Sequence[Mapping[str, object]], answers: Sequence[str]
    ) -> list[list[int]]:
        """Token ids of each example rendered as plain text with its answer in place of
        [MASK] (a demonstration): its inputs and the answer as data, its soft slots left out,
        nothing cut, no special tokens."""
        rendered = [
            self._trim(_answered(self.template.render(example), answer))[0]
            for example, answer in zip(examples, answers, strict=True)
        ]
        self._cache_anchors(rendered)
        return [[t for s in segs for t in self._anchor_cache[s.text, s.data]] for segs in rendered]

    def data_tokens(self, text: str) -> list[int]:
        """The token ids of a text taken as data (no special tokens, none recognised)."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)[
            "input_ids"
        ]

    def prepended(self, encoded: EncodedPrompt, context: Sequence[int]) -> EncodedPrompt:
        """An encoded example with ``context`` tokens (plain tokens) put before its template,
        after the special tokens that open it."""
        if not context:
            return encoded
        at, n = len(self.prefix), len(context)

        def shifted(position: int) -> int:
            return position + n if position >= 0 else position

        return replace(
            encoded,
            input_ids=[*encoded.input_ids[:at], *context, *encoded.input_ids[at:]],
            slot_ids=[*encoded.slot_ids[:at], *[-1] * n, *encoded.slot_ids[at:]],
            word_ids=[*encoded.word_ids[:at], *[-1] * n, *encoded.word_ids[at:]],
            mask_position=shifted(encoded.mask_position),
            answer_start=shifted(encoded.answer_start),
        )

    def _encode_answers(self, targets: Sequence[str] | None, spaces: list[bool]) -> list[list[int]]:
        """Each target's tokens and the end token (nothing without targets or answers)."""
        if targets is None or self.answers is None:
            return [[] for _ in spaces]
        texts = [
            (" " if space and self.answers == "inline" else "") + str(target)
            for target, space in zip(targets, spaces, strict=True)
        ]
        ids = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)
        return [[*row, self.tokenizer.eos_token_id] for row in ids["input_ids"]]

    def _encode_inputs(self, segments: list[Segment]) -> list[tuple[list[int], list[int]]]:
        """Token ids and word ids of every input segment, in order, in two batched calls."""
        inputs = [s for s in segments if s.kind is SegmentKind.INPUT]
        texts = [s.text for s in inputs if s.words is None]
        words = [" " + w for s in inputs if s.words is not None for w in s.words]
        # Data is data: text that looks like a special token ("[SEP]", "<|endoftext|>") is
        # tokenised as the text it is.
        split = {"add_special_tokens": False, "split_special_tokens": True}
        text_encoding = self.tokenizer(texts, **split) if texts else None
        word_tokens = iter(self.tokenizer(words, **split)["input_ids"] if words else [])
        out, n_texts = [], 0
        for segment in inputs:
            if segment.words is None:
                ids = text_encoding["input_ids"][n_texts]
                out.append((ids, _word_ids(text_encoding, n_texts)))
                n_texts += 1
                continue
            ids, word_ids = [], []
            for index in range(len(segment.words)):
                tokens = next(word_tokens) or [self.placeholder_id]  # a word no token covers
                ids += tokens
                word_ids += [index] * len(tokens)
            out.append((ids, word_ids))
        return out

    def _trim(self, segments: list[Segment]) -> tuple[list[Segment], bool]:
        """Attach each anchor's trailing whitespace to what follows, as tokenizers expect
        (" the", not " " + "the"): an input gets it as a leading space; before a soft slot or
        [MASK] it is dropped, since they stand for whole tokens (label words and text answers
        are tokenised with the space the template has before them). For causal LMs, stop at
        [MASK]. Also says whether whitespace comes before the answer ([MASK] or the end)."""
        out: list[Segment] = []
        space = ""
        for seg in segments:
            if seg.kind is SegmentKind.TEXT:
                text = space + seg.text
                stripped = text.rstrip()
                space = text[len(stripped) :]
                if stripped:
                    out.append(Segment(SegmentKind.TEXT, stripped, data=seg.data))
                continue
            spaced = bool(space)
            if seg.kind is SegmentKind.INPUT:
                seg = Segment(SegmentKind.INPUT, space + seg.text, seg.name, words=seg.words)
            space = ""
            out.append(seg)
            if self.causal and seg.kind is SegmentKind.MASK:
                return out, spaced
        return out, bool(space)

    def _cache_anchors(self, rendered: list[list[Segment]]) -> None:
        """Tokenise the text pieces not seen yet: the template's own text as written (its
        special tokens, if it names any, are special), and what Jinja inserted as data."""
        new = list(
            dict.fromkeys(
                (s.text, s.data)
                for segs in rendered
                for s in segs
                if s.kind is SegmentKind.TEXT and (s.text, s.data) not in self._anchor_cache
            )
        )
        for data in (False, True):
            texts = [text for text, is_data in new if is_data == data]
            if texts:
                split = {"split_special_tokens": True} if data else {}
                ids = self.tokenizer(texts, add_special_tokens=False, **split)["input_ids"]
                self._anchor_cache.update(((t, data), i) for t, i in zip(texts, ids, strict=True))

    def _tokens(self, seg: Segment) -> tuple[list[int], int]:
        """Token ids and soft-slot id of a segment that is not an input."""
        if seg.kind is SegmentKind.TEXT:
            return self._anchor_cache[seg.text, seg.data], -1
        if seg.kind is SegmentKind.SOFT:
            return ([self.placeholder_id] if self.soft_positions else []), seg.slot
        return ([] if self.causal else [self.mask_token_id]), -1

    def _assemble(
        self,
        segments: list[Segment],
        inputs: list[tuple[list[int], list[int]]],
        answer: list[int],
    ) -> EncodedPrompt:
        fixed = len(self.prefix) + len(self.suffix)
        fixed += sum(len(self._tokens(s)[0]) for s in segments if s.kind is not SegmentKind.INPUT)
        least = len(inputs)  # a token of each input, at the least
        if self.answers == "inline":  # the answer shares the sequence; inputs are cut first
            answer = answer[: max(self.max_length - fixed - least, 1)]
            fixed += len(answer)
        budget = self.max_length - fixed
        if budget < least:
            raise TemplateError(
                f"{self.template.name} takes {fixed} tokens without its inputs (its own text, "
                "what its Jinja inserts, its soft slots and the answer), which leaves no room in "
                f"max_length={self.max_length}: raise max_length, or shorten the template or "
                "the fields it inserts."
            )
        cut_inputs = zip(inputs, fit_lengths([len(ids) for ids, _ in inputs], budget), strict=True)
        input_ids, slot_ids, word_ids = (
            [*self.prefix],
            [-1] * len(self.prefix),
            [-1] * len(self.prefix),
        )
        mask_position, word_offset = -1, 0
        for seg in segments:
            if seg.kind is SegmentKind.MASK:
                mask_position = len(input_ids) - 1 if self.causal else len(input_ids)
            if seg.kind is SegmentKind.INPUT:
                (full_ids, full_words), length = next(cut_inputs)
                ids, slot = full_ids[:length], -1
                word_ids += [w + word_offset for w in full_words[:length]]
                word_offset += max(full_words, default=-1) + 1
            else:
                (ids, slot) = self._tokens(seg)
                word_ids += [-1] * len(ids)
            input_ids += ids
            slot_ids += [slot] * len(ids)
        if self.causal and self.template.has_mask and mask_position < 0:
            raise TemplateError(
                f"{self.template.name}: a causal LM reads [MASK] from the token before it; "
                "put text before [MASK]."
            )
        input_ids += self.suffix
        n_new = len(self.suffix) + (len(answer) if self.answers == "inline" else 0)
        answer_start = len(input_ids) if answer and self.answers == "inline" else -1
        if answer_start >= 0:
            input_ids += answer
        return EncodedPrompt(
            input_ids,
            slot_ids + [-1] * n_new,
            word_ids + [-1] * n_new,
            mask_position,
            answer_start,
            tuple(answer[: self.max_length]) if self.answers == "decoder" else (),
        )


def _answered(segments: Sequence[Segment], answer: str) -> list[Segment]:
    """Rendered segments as text: inputs and ``answer`` (in place of [MASK]) as data, soft
    slots left out."""
    out = []
    for seg in segments:
        if seg.kind is SegmentKind.TEXT:
            out.append(seg)
        elif seg.kind is not SegmentKind.SOFT:
            text = answer if seg.kind is SegmentKind.MASK else seg.text
            out.append(Segment(SegmentKind.TEXT, text, data=True))
    return out


def _reads_data(segments: Sequence[Segment]) -> bool:
    """Whether the part of a template that is fed holds an input or data Jinja inserted."""
    return any(s.kind is SegmentKind.INPUT or s.data for s in segments)


def mask_token(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token [MASK] stands for: the tokenizer's mask token, or else T5's first sentinel
    (``<extra_id_0>``, the span its decoder then fills in); None if it has neither."""
    if tokenizer.mask_token_id is not None:
        return tokenizer.mask_token_id
    sentinel = tokenizer.convert_tokens_to_ids(SENTINEL)
    return None if sentinel in (None, tokenizer.unk_token_id) else sentinel


def word_tokens(tokenizer: PreTrainedTokenizerBase, words: str, space: bool) -> list[int] | None:
    """The token ids of ``words`` as they read after a space (``space``) or alone; None when
    the tokenizer cannot represent them (no token, or an unknown one)."""
    ids = tokenizer((" " if space else "") + words, add_special_tokens=False)["input_ids"]
    if not ids or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids):
        return None
    return ids


def _word_ids(encoding, index: int) -> list[int]:
    """Word index of each token of one input (fast tokenizers; else whitespace words)."""
    if encoding.is_fast:
        return [-1 if w is None else w for w in encoding.word_ids(index)]
    ids = encoding["input_ids"][index]
    return list(range(len(ids)))


def _special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. [CLS] ... [SEP])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []
