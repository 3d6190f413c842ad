"""Training-time augmentation of device batches (the recipe's ``spec_augment`` and ``face_augment``).

Both run on the batch's device with torch's generator, so they add no host sync to the training
step, and both leave absent rows (a missing modality: zeros) as they are. Under DDP every process
draws the random numbers of the whole global batch (its seed is the same on every process) and
uses its own rows' share, so the result does not depend on the number of processes.

- Spectrograms: each window shifted along the Mel axis by up to 4 bins either way (the edge
  bins repeated), as a longer or shorter vocal tract would move the formants (after VTLP,
  Jaitly & Hinton 2013); then two frequency bands of up to 12 Mel bins and two time spans of up
  to 12 frames (~64 ms) set to 0, the training mean after standardisation (SpecAugment, Park
  et al. 2019).
- Faces: a random horizontal flip and a light crop (scale 0.85-1, shifted at random) resized
  back to the input size, in one affine resampling per batch.
- Facial features (``--visual-features``, standardised): Gaussian noise of deviation
  ``feature_noise`` on every present row. A table gives every window of a recording the same
  vector, so without it the visual network sees a few hundred distinct inputs and learns them by
  heart (RAVDESS action units: training CE 0.02 while validation stays put).

``drop_modalities`` (the recipe's ``modality_dropout``) works on the host masks instead, in the
batch reader: a share of the training windows that have both inputs lose one of them, as a
missing modality does at test time, so the fusion cannot lean on one network alone.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from .data import Batch

MASKS, MAX_BAND = 2, 12  # per window and axis
MAX_SHIFT = 4  # Mel bins
MIN_SCALE = 0.85


def augment(batch: Batch, spectrograms: bool = True, faces: bool = True, rank: int = 0, feature_noise: float = 0.0) -> Batch:
    rows = _global_rows(batch, rank)
    audio = mask_spectrograms(batch.audio, rows=rows) if spectrograms and batch.audio is not None else batch.audio
    visual = batch.visual
    if faces and visual is not None and visual.dim() == 4:
        visual = crop_and_flip(visual, rows=rows)
    elif feature_noise and visual is not None and visual.dim() == 2:  # facial features are not images: noise instead
        visual = jitter_features(visual, feature_noise, rows=rows)
    return replace(batch, audio=audio, visual=visual)


def jitter_features(x: torch.Tensor, sigma: float, rows=None) -> torch.Tensor:
    """``x`` (n, D) standardised features plus Gaussian noise of deviation ``sigma`` (zero rows,
    absent windows, stay zero)."""
    noise = _draw(x.shape[0], rows, lambda m: torch.randn(m, x.shape[1], device=x.device))
    present = (x != 0).any(dim=1, keepdim=True)
    return x + sigma * noise * present


def drop_modalities(rows: torch.Tensor, share: float, rng, offset: int = 0, total: int | None = None) -> torch.Tensor:
    """Host masks (n, 3) with, for a ``share`` of the rows that have both inputs, one of them
    (visual or audio, even odds) taken away. ``rng`` (numpy) draws for the global batch of
    ``total`` rows, of which these are rows ``offset`` .. offset + n, so the draw does not depend
    on the number of processes."""
    n = rows.shape[0]
    total = n if total is None else total
    u = rng.random((total, 2))[offset : offset + n]
    both = (rows[:, 0] & rows[:, 1]).numpy()
    hit = both & (u[:, 0] < share)
    out = rows.clone()
    out[torch.from_numpy(hit & (u[:, 1] < 0.5)), 0] = False
    out[torch.from_numpy(hit & (u[:, 1] >= 0.5)), 1] = False
    return out


def _global_rows(batch: Batch, rank: int) -> tuple[int, int] | None:
    """(first row, rows in all) of this process's slice in the global batch; None alone."""
    sizes = batch.rows_per_rank
    if not sizes or len(sizes) == 1:
        return None
    return sum(sizes[:rank]), sum(sizes)


def _draw(n: int, rows: tuple[int, int] | None, make) -> torch.Tensor:
    """``make(m)`` random rows for this process's ``n``: drawn for the whole global batch (``rows``:
    this slice's first row and the batch's size), this slice kept."""
    if rows is None:
        return make(n)
    first, total = rows
    return make(total)[first : first + n]


def band_mask(n: int, size: int, masks: int, max_width: int, device, rows=None) -> torch.Tensor:
    """(n, size) bool: ``masks`` random bands of width 0..max_width per row."""
    width = _draw(n, rows, lambda m: torch.randint(0, max_width + 1, (m, masks, 1), device=device))
    start = (_draw(n, rows, lambda m: torch.rand(m, masks, 1, device=device)) * (size - width + 1)).long()
    pos = torch.arange(size, device=device).view(1, 1, size)
    return ((pos >= start) & (pos < start + width)).any(dim=1)


def shift_mels(x: torch.Tensor, max_shift: int = MAX_SHIFT, rows=None) -> torch.Tensor:
    """``x`` (n, 1, mels, frames), each row moved along the Mel axis by -max_shift..max_shift bins."""
    n, _, mels, frames = x.shape
    shift = _draw(n, rows, lambda m: torch.randint(-max_shift, max_shift + 1, (m, 1, 1, 1), device=x.device))
    source = (torch.arange(mels, device=x.device).view(1, 1, mels, 1) - shift).clamp(0, mels - 1)
    return x.gather(2, source.expand(n, 1, mels, frames))


def mask_spectrograms(x: torch.Tensor, masks: int = MASKS, max_width: int = MAX_BAND, rows=None) -> torch.Tensor:
    """``x`` (n, 1, mels, frames) shifted along the Mel axis, with frequency and time bands set to 0
    (out of place; a row of zeros, an absent window, stays zero)."""
    x = shift_mels(x, rows=rows)
    n, _, mels, frames = x.shape
    hit = (band_mask(n, mels, masks, max_width, x.device, rows)[:, None, :, None]
           | band_mask(n, frames, masks, max_width, x.device, rows)[:, None, None, :])  # fmt: skip
    return x.masked_fill(hit, 0.0)


def crop_and_flip(x: torch.Tensor, min_scale: float = MIN_SCALE, rows=None) -> torch.Tensor:
    """``x`` (n, 3, S, S): each face flipped with probability ½ and cropped to a random square of
    ``min_scale``..1 of its side, resized back to S (zero rows stay zero: the crop of zeros)."""
    n = x.shape[0]
    u = _draw(n, rows, lambda m: torch.rand(m, 4, device=x.device))  # scale, flip, shift x, shift y
    scale = min_scale + (1 - min_scale) * u[:, 0]
    flip = torch.where(u[:, 1] < 0.5, -1.0, 1.0)
    shift = (1 - scale) * (2 * u[:, 2:].T - 1)  # the crop stays inside the face
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, 0, 2], theta[:, 1, 2] = shift[0], shift[1]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid.to(torch.float32), mode="bilinear", padding_mode="border", align_corners=False)
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return out.to(x.dtype).contiguous(memory_format=layout)
