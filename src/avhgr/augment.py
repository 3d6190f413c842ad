"""Training-time augmentation of device batches (the recipe's ``spec_augment`` and ``face_augment``).

Both run on the batch's device with torch's generator, so they add no host sync to the training
step, and both leave absent rows (a missing modality: zeros) as they are.

- Spectrograms (SpecAugment, Park et al. 2019): two frequency bands of up to 12 Mel bins and two
  time spans of up to 12 frames (~64 ms) per window are set to 0, the training mean after
  standardisation.
- Faces: a random horizontal flip and a light crop (scale 0.85-1, shifted at random) resized
  back to the input size, in one affine resampling per batch.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from .data import Batch

MASKS, MAX_BAND = 2, 12  # per window and axis
MIN_SCALE = 0.85


def augment(batch: Batch, spectrograms: bool = True, faces: bool = True) -> Batch:
    audio = mask_spectrograms(batch.audio) if spectrograms and batch.audio is not None else batch.audio
    visual = crop_and_flip(batch.visual) if faces and batch.visual is not None else batch.visual
    return replace(batch, audio=audio, visual=visual)


def band_mask(n: int, size: int, masks: int, max_width: int, device) -> torch.Tensor:
    """(n, size) bool: ``masks`` random bands of width 0..max_width per row."""
    width = torch.randint(0, max_width + 1, (n, masks, 1), device=device)
    start = (torch.rand(n, masks, 1, device=device) * (size - width + 1)).long()
    pos = torch.arange(size, device=device).view(1, 1, size)
    return ((pos >= start) & (pos < start + width)).any(dim=1)


def mask_spectrograms(x: torch.Tensor, masks: int = MASKS, max_width: int = MAX_BAND) -> torch.Tensor:
    """``x`` (n, 1, mels, frames) with frequency and time bands set to 0 (out of place)."""
    n, _, mels, frames = x.shape
    hit = band_mask(n, mels, masks, max_width, x.device)[:, None, :, None] | band_mask(n, frames, masks, max_width, x.device)[:, None, None, :]
    return x.masked_fill(hit, 0.0)


def crop_and_flip(x: torch.Tensor, min_scale: float = MIN_SCALE) -> torch.Tensor:
    """``x`` (n, 3, S, S): each face flipped with probability ½ and cropped to a random square of
    ``min_scale``..1 of its side, resized back to S (zero rows stay zero: the crop of zeros)."""
    n = x.shape[0]
    scale = min_scale + (1 - min_scale) * torch.rand(n, device=x.device)
    flip = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0)
    shift = (1 - scale) * (2 * torch.rand(2, n, device=x.device) - 1)  # the crop stays inside the face
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, 0, 2], theta[:, 1, 2] = shift[0], shift[1]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid.to(torch.float32), mode="bilinear", padding_mode="border", align_corners=False)
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return out.to(x.dtype).contiguous(memory_format=layout)
