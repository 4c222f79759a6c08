"""Text classifiers: many texts through one test DataLoader, padded and sorted as fastai does, exactly.

fastai tokenizes and numericalizes each text with the Learner's own Tokenizer and vocab, sorts
a batch's texts by length and pads them in chunks of the model's `seq_len` (pad first, the
remainder after). Its SentenceEncoder then assumes that, at the start of every chunk, the texts
still running are the first rows of the batch. When the longest text's length is not a multiple
of `seq_len`, that fails for the last chunk: a shorter text whose remainder is 0 runs to the end
while longer ones end in padding, and the encoder skips it, so `get_preds` answers it wrongly
(0.003 off `learn.predict` on the test model). Padding a batch longer than one chunk to a
multiple of `seq_len` keeps every running text in the leading rows at every chunk; each text then
sees the chunks it sees alone, so the answer equals `learn.predict`'s (when the model's `max_len`
is a multiple of `seq_len`, as fastai's default 72 × 20 is; else texts longer than `max_len`
tokens may differ). The price: up to `seq_len` - 1 more padded steps in such a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastai.text.data import Pad_Chunk

from ..defaults import MAX_BATCH
from .learner import ServedLearner
from .predict import Prediction, predict_loader


class WholeChunkPad(Pad_Chunk):
    """fastai's Pad_Chunk, with a padded length over one chunk rounded up to a multiple of `seq_len`.

    A batch of texts that fit in one chunk is left as fastai pads it: they all start at position
    0, so the encoder runs every one of them.
    """

    def before_call(self, b: Any) -> None:
        super().before_call(b)
        if self.max_len > self.seq_len:
            self.max_len = -(-self.max_len // self.seq_len) * self.seq_len


def predict_texts(served: ServedLearner, texts: Sequence[str], max_batch: int = MAX_BATCH) -> Sequence[Prediction]:
    """Predict every text with one test DataLoader, `max_batch` texts per forward pass, answers in order."""
    if not texts:
        return []
    learn = served.learn
    before_batch = _whole_chunk_padding(learn.dls.valid.before_batch)
    test_dl = learn.dls.test_dl(list(texts), bs=max_batch, num_workers=0, before_batch=before_batch)
    # Sorted by length for the forward passes; get_preds puts the answers back in the texts' order.
    return predict_loader(served, test_dl, reorder=True)


def _whole_chunk_padding(before_batch: Any) -> Any:
    """The DataLoader's `before_batch` pipeline, its `Pad_Chunk` padding to a whole number of chunks."""
    transforms = []
    for transform in getattr(before_batch, "fs", []):
        if type(transform) is Pad_Chunk:
            transform = WholeChunkPad(
                pad_idx=transform.pad_idx, pad_first=transform.pad_first, seq_len=transform.seq_len
            )
        transforms.append(transform)
    return type(before_batch)(transforms)
