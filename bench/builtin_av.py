"""The built-in audio-visual model: is the face network's port right, and what does each expert get?

    .venv/bin/python bench/builtin_av.py --clips ../shared/data/ravdess_av [--reference-python PY]

1. The port (``keras_port``) against the reference: ``PY`` is a Python with TensorFlow (and, for the
   preprocessing row, OpenCV). From the RAVDESS clips, MTCNN face crops (10 windows a clip, every
   0.3 s); each crop becomes the network's 64 x 64 input by our preprocessing, and the same arrays go
   through fer's Keras file (``load_model``) and its quantised ``.tflite`` (TensorFlow's interpreter)
   and through our PyTorch network: the largest absolute difference of the probabilities. Then
   fer's own preprocessing (OpenCV gray and resize of the same crops) against ours: how far the two
   inputs' probabilities are apart. Without ``PY``, the port is compared with nothing and says so.
2. Each expert alone and both together (``builtin:face``, ``builtin:speech``, ``builtin``) on the
   clips whose class is one of the six (neutral is not): file accuracy, with the number of clips.
   The voice expert was trained on these actors' speech (RAVDESS actors 1-12, the same takes): its
   figure is on its training data; the face expert has never seen these people (FER2013 photos).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from avhgr.builtin import FACE
from avhgr.datasets import RAVDESS_EMOTIONS
from avhgr.experts import FER_CLASSES, fer_input, load_face_expert
from avhgr.features import FeatureSettings
from avhgr.preprocess import make_cropper, process_file

REFERENCE = r"""
import json, sys, numpy as np, tensorflow as tf
data = np.load(sys.argv[1]); out = {}
model = tf.keras.models.load_model(sys.argv[2], compile=False)
out["keras"] = model.predict(data["x"][..., None], verbose=0).tolist()
interp = tf.lite.Interpreter(model_path=sys.argv[3]); interp.allocate_tensors()
i, o = interp.get_input_details()[0], interp.get_output_details()[0]
rows = []
for x in data["x"]:
    interp.set_tensor(i["index"], x[None, ..., None].astype(i["dtype"])); interp.invoke(); rows.append(interp.get_tensor(o["index"])[0].tolist())
out["tflite"] = rows
try:
    import cv2
    gray = [cv2.resize(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), (64, 64)) for c in data["crops"]]
    out["cv2_input"] = ((np.array(gray, np.float32) / 255.0 - 0.5) * 2.0).tolist()
except ImportError:
    out["cv2_input"] = None
json.dump(out, open(sys.argv[4], "w"))
"""


def label(path: Path) -> str:
    return RAVDESS_EMOTIONS[int(path.stem.split("-")[2])]


def crops_of(clips: list[Path]) -> np.ndarray:
    settings = FeatureSettings()
    cropper = make_cropper(settings, "cpu")
    out = []
    for clip in clips:
        raw = process_file(clip, settings, cropper, hop=0.3)
        out += [c for c, found in zip(raw["visual"], raw["face_found"]) if found][:10]
    return np.stack(out)


def port(args, clips: list[Path], out: dict) -> None:
    expert = load_face_expert(FACE)
    crops = crops_of(clips)
    faces = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = fer_input((faces - mean) / std)  # what the model gets in prediction
    with torch.no_grad():
        ours = expert.net(x).numpy()
    out["port"] = {"crops": len(crops), "clips": len(clips)}
    if not args.reference_python:
        out["port"]["reference"] = "none: no Python with TensorFlow was given (--reference-python); the port is not compared here"
        return
    import importlib.util

    fer_dir = Path(list(importlib.util.find_spec("fer").submodule_search_locations)[0])
    work = args.out / "port"
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "inputs.npz", x=x[:, 0].numpy(), crops=crops)
    (work / "reference.py").write_text(REFERENCE)
    subprocess.run([args.reference_python, str(work / "reference.py"), str(work / "inputs.npz"), str(fer_dir / "data/emotion_model.hdf5"),
                    str(fer_dir / "data/emotion_model_quantized.tflite"), str(work / "reference.json")], check=True,
                   capture_output=True, text=True)  # fmt: skip
    ref = json.loads((work / "reference.json").read_text())
    keras, tflite = np.array(ref["keras"]), np.array(ref["tflite"])
    out["port"] |= {"max_abs_diff_keras": float(np.abs(ours - keras).max()), "max_abs_diff_tflite": float(np.abs(ours - tflite).max()),
                    "same_top_class_keras": float((ours.argmax(1) == keras.argmax(1)).mean()),
                    # the quantised file's own error: how far TFLite is from the Keras original it was made from
                    "max_abs_diff_keras_vs_tflite": float(np.abs(keras - tflite).max()), "mean_abs_diff_keras_vs_tflite": float(np.abs(keras - tflite).mean()),
                    "reference": f"{Path(args.reference_python)}: TensorFlow's Keras and TFLite"}  # fmt: skip
    if ref["cv2_input"] is not None:
        cv = torch.tensor(ref["cv2_input"], dtype=torch.float32)[:, None]
        with torch.no_grad():
            theirs = expert.net(cv).numpy()
        out["port"] |= {"input_max_abs_diff_vs_opencv": float((cv - x).abs().max()), "probability_max_abs_diff_vs_opencv": float(np.abs(theirs - ours).max()),
                        "same_top_class_vs_opencv": float((theirs.argmax(1) == ours.argmax(1)).mean())}  # fmt: skip


def experts(clips: list[Path], out: dict) -> None:
    from avhgr.predict import Predictor

    scored = [c for c in clips if label(c) in FER_CLASSES[:6]]
    out["experts"] = {"clips": len(scored), "left_out": [c.name for c in clips if c not in scored], "labels": {c.name: label(c) for c in scored}}
    for name in ("builtin:face", "builtin:speech", "builtin"):
        t0 = time.time()
        predictor = Predictor(name, device="cpu")
        answers = {c.name: predictor.predict_file(c)["emotion"] for c in scored}
        right = sum(answers[c.name] == label(c) for c in scored)
        out["experts"][name] = {"right": right, "accuracy": right / len(scored), "answers": answers, "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=Path, required=True, help="RAVDESS audio-visual clips (01-01-EE-...mp4)")
    ap.add_argument("--reference-python", default=None, help="a Python with TensorFlow (and OpenCV) for the reference")
    ap.add_argument("--out", type=Path, default=Path("bench_out/builtin_av"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    clips = sorted(args.clips.glob("*.mp4"))
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M")}
    port(args, clips, out)
    experts(clips, out)
    (args.out / "builtin_av.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
