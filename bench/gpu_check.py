"""Every GPU figure the README lacks, in one prepared run that reports even when cut short.

    python3 bench/gpu_check.py --data .gpu_data --out $OUT        # on a lent GPU (README, "GPU figures")
    .venv/bin/python bench/gpu_check.py --smoke                   # the same code paths on the CPU, tiny sizes, < 3 min

Parts, in this order, each in a process of its own with its own time limit, and each written to
``gpu_check.json`` and ``gpu_check.md`` in ``--out`` before the next starts (a part that runs
out of time, or fails, is recorded as such and the others go on):

  cache       a real cache of the clips in ``--data`` (RAVDESS audio-visual clips, copied to make
              up ``--videos`` files; generated clips where none are carried), made by
              `avhgr preprocess` with MTCNN on the device: videos/s with all cores, worker
              start-up included
  step        the training step in the paper's shape (two ResNet-50s, 224 px faces, 94 x 94
              spectrograms, bf16 autocast and channels-last), batch 90 and 256: (a) a plain PyTorch
              reference step, (b) our step on batches on the device, (c) our loop reading the cache;
              b/a, c/b, and the host syncs in one step
  inference   windows/s of the joint model at batch 256
  predict     `avhgr predict` on a 3 s clip in a warm process: the clip's time, model load apart
  speech      a short real run, if ``--data`` holds RAVDESS speech (``ravdess_speech/Actor_*``): audio
              only, ResNet-50, one actor-disjoint fold, a few epochs: test accuracy, seconds per epoch

``--smoke`` runs every part on the CPU with a ResNet-18, 32 px faces, batch 8, a few steps and a
generated corpus (a test runs it); its figures only show that the code paths work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = ("cache", "step", "inference", "predict", "speech")
# Seconds each part may take on the GPU machine (8 minutes in all, start-up of each process included).
LIMITS = {"cache": 120, "step": 150, "inference": 40, "predict": 50, "speech": 120}
SMOKE_LIMIT = 60


def shape(smoke: bool) -> dict:
    """The model and input shape each part measures: the paper's on the GPU, a tiny one for --smoke."""
    if smoke:
        return dict(device="cpu", backbone="resnet18", face_size=32, batches=(8,), steps=2, warmup=1, windows=4, videos=6, amp=False)
    return dict(device="cuda", backbone="resnet50", face_size=224, batches=(90, 256), steps=20, warmup=5, windows=30, videos=48, amp=True)


# --------------------------------------------------------------------------- the parts (each in its own process)


def part_cache(args, sh: dict) -> dict:
    """Preprocess ``sh['videos']`` clips into ``work/cache`` with every core and MTCNN on the device."""
    from avhgr.datasets import Video
    from avhgr.features import FeatureSettings
    from avhgr.preprocess import default_workers, run_preprocess

    clips = source_clips(args, sh)
    folder = args.work / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    videos = []
    for i in range(sh["videos"]):  # the carried clips over again, under names of their own (other windows each)
        src = clips[i % len(clips)]
        dst = folder / f"clip{i:03d}{src.suffix}"
        if not dst.exists():
            shutil.copy(src, dst)
        videos.append(Video(dst, ("happiness", "sadness")[i % 2], f"s{i % 4}"))
    settings = FeatureSettings(windows=sh["windows"], face_size=sh["face_size"])
    workers = max(1, min(os.cpu_count() or 1, 16)) if not args.smoke else 2
    shutil.rmtree(args.work / "cache", ignore_errors=True)
    t = time.perf_counter()
    report = run_preprocess(videos, ["happiness", "sadness"], args.work / "cache", settings, folder, "folder", workers=workers,
                            device=sh["device"], progress=False)  # fmt: skip
    wall = time.perf_counter() - t
    return {"videos": report["videos_ok"], "windows": report["windows"], "workers": workers, "device": sh["device"],
            "seconds": round(wall, 2), "videos_per_s": round(report["videos_ok"] / wall, 2),
            "windows_per_s": round(report["windows"] / wall, 1), "face_found_rate": report["face_found_rate"],
            "clips": sorted({c.name for c in clips})}  # fmt: skip


def part_step(args, sh: dict) -> dict:
    """(a) reference step, (b) our step, (c) our loop over the cache, per batch size."""
    import tempfile

    import numpy as np
    import torch
    import torch.nn.functional as F

    from avhgr.models import AVHGRModel
    from avhgr.train import Session, Stage, TrainConfig, prepare, train_epoch, train_step
    from train_throughput import Reference, host_syncs, soft_hgr_reference, sync, timed

    device = torch.device(sh["device"])
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    out = {"backbone": sh["backbone"], "face_size": sh["face_size"], "precision": "bf16 + channels-last" if sh["amp"] else "float32"}
    for bs in sh["batches"]:
        torch.manual_seed(0)
        ref = Reference(sh["backbone"], 2).to(device, memory_format=fmt)
        opt = torch.optim.Adam(ref.parameters(), 1e-3, fused=cuda)
        face = torch.randn(bs, 3, sh["face_size"], sh["face_size"], device=device).to(memory_format=fmt)
        spec = torch.randn(bs, 1, 94, 94, device=device).to(memory_format=fmt)
        y = torch.randint(0, 2, (bs,), device=device)

        def ref_step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=sh["amp"]):
                logits, f, g, h = ref(face, spec, y)
                loss = F.cross_entropy(logits.float(), y) - (soft_hgr_reference(f, g) + soft_hgr_reference(f, h) + soft_hgr_reference(g, h))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        a = bs / timed(ref_step, sh["steps"], sh["warmup"], device)
        del ref, opt, face, spec
        with tempfile.TemporaryDirectory() as tmp:
            # The paper's recipe: the reference step has no augmentation or feature standardisation either.
            cfg = TrainConfig(cache=str(args.work / "cache"), out=tmp, backbone=sh["backbone"], batch_size=bs, device=sh["device"], split="all",
                              epochs=1, recipe="paper", amp=sh["amp"])  # fmt: skip
            s = Session(cfg)
            torch.manual_seed(0)
            windows = s.reader.windows(s.split["train"])
            stage = Stage("stage2", AVHGRModel(2, sh["backbone"], 2, feature_norm=cfg.feature_norm), s.split["train"], 1, 10, corr="fgh")
            model, train_model, opt = prepare(s, stage)
            batch = s.reader.read(np.resize(windows, bs), s.labeled).to(device, s.channels_last)
            b = bs / timed(lambda: train_step(s, stage, train_model, opt, batch, cfg.lam), sh["steps"], sh["warmup"], device)
            loop = np.resize(windows, bs * sh["steps"])  # a small cache is gone over more than once
            train_epoch(s, stage, train_model, opt, loop[: 2 * bs], 0)  # warm the page cache and the kernels
            sync(device)
            t = time.perf_counter()
            train_epoch(s, stage, train_model, opt, loop, 1)
            sync(device)
            c = len(loop) / (time.perf_counter() - t)
            syncs = host_syncs(lambda: train_step(s, stage, train_model, opt, batch, cfg.lam)) if cuda else None
            del model, train_model, opt, batch
        if cuda:
            torch.cuda.empty_cache()
        out[f"batch{bs}"] = {"reference_windows_per_s": round(a, 1), "step_windows_per_s": round(b, 1), "loop_windows_per_s": round(c, 1),
                             "b_over_a": round(b / a, 3), "c_over_b": round(c / b, 3), "host_syncs_per_step": syncs}  # fmt: skip
    return out


def part_inference(args, sh: dict) -> dict:
    import torch

    from avhgr.cache import Cache
    from avhgr.data import WindowReader
    from avhgr.models import AVHGRModel
    from train_throughput import timed

    device = torch.device(sh["device"])
    reader = WindowReader(Cache.open(args.work / "cache"))
    model = AVHGRModel(2, sh["backbone"], 2).to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    import numpy as np

    batch = reader.read(np.resize(np.arange(reader.cache.num_windows), 256)).to(device, device.type == "cuda")

    @torch.no_grad()
    def infer():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=sh["amp"]):
            model(batch)

    rate = 256 / timed(infer, max(3, sh["steps"] // 2), sh["warmup"], device)
    return {"batch": 256, "windows_per_s": round(rate, 1), "backbone": sh["backbone"]}


def part_predict(args, sh: dict) -> dict:
    """A model folder of the paper's shape (random weights: the time does not depend on them),
    then predict on a clip twice in one process: the first includes MTCNN's load, the second is warm."""
    import torch

    from avhgr.features import FeatureSettings
    from avhgr.models import AVHGRModel
    from avhgr.predict import Predictor
    from avhgr.runs import save_weights

    run = args.work / "predict_model"
    run.mkdir(parents=True, exist_ok=True)
    model = AVHGRModel(6, sh["backbone"], 2, feature_norm="batch")
    save_weights(model, run / "model.safetensors")
    card = {"classes": ["anger", "disgust", "fear", "happiness", "sadness", "surprise"], "modalities": ["audio", "visual"],
            "backbone": sh["backbone"], "fusion_layers": 2, "feature_norm": "batch", "audio_stats": [-40.0, 15.0], "level": "window",
            "evidence": True, "features": FeatureSettings(windows=sh["windows"], face_size=sh["face_size"]).as_dict()}  # fmt: skip
    (run / "model.json").write_text(json.dumps(card))
    clip = source_clips(args, sh)[0]
    t = time.perf_counter()
    predictor = Predictor(run, sh["device"])
    load = time.perf_counter() - t
    times = []
    for _ in range(2):
        t = time.perf_counter()
        result = predictor.predict_file(clip)
        if sh["device"] == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"clip": clip.name, "model_load_s": round(load, 3), "first_clip_s": round(times[0], 3), "warm_clip_s": round(times[1], 3),
            "windows": result["windows"], "emotion": result["emotion"]}  # fmt: skip


def part_speech(args, sh: dict) -> dict:
    """A short real run: RAVDESS speech, audio only, one actor-disjoint fold."""
    from avhgr.datasets import index_dataset, select_emotions
    from avhgr.features import FeatureSettings
    from avhgr.preprocess import default_workers, run_preprocess
    from avhgr.train import TrainConfig, train_owned

    root = args.data / "ravdess_speech" if args.data else None
    if args.smoke:
        root = generated_speech(args.work / "speech_data")
    if root is None or not root.is_dir():
        return {"skipped": f"no RAVDESS speech under {args.data}/ravdess_speech/Actor_*"}
    dataset = "ravdess" if not args.smoke else "folder"
    videos, classes = select_emotions(index_dataset(dataset, root), "basic6" if not args.smoke else "all")
    cache = args.work / "speech_cache"
    run_preprocess(videos, classes, cache, FeatureSettings(windows=20 if not args.smoke else 2), root, dataset, workers=default_workers(),
                   progress=False)  # fmt: skip
    epochs = 4 if not args.smoke else 1
    cfg = TrainConfig(cache=str(cache), out=str(args.work / "speech_run"), modalities=("audio",), split="actor" if not args.smoke else "random",
                      fold=0 if not args.smoke else None, backbone=sh["backbone"], epochs=epochs, device=sh["device"], amp=sh["amp"],
                      windows_per_epoch=10 if not args.smoke else "all")  # fmt: skip
    t = time.perf_counter()
    report = train_owned(cfg, log=lambda *a: None)
    wall = time.perf_counter() - t
    rows = (args.work / "speech_run" / "metrics.csv").read_text().splitlines()[1:]
    per_epoch = [float(r.split(",")[-1]) for r in rows]
    return {"data": "generated voices (--smoke)" if args.smoke else "RAVDESS speech, fold 0", "files": len(videos),
            "test_files": report["videos"], "epochs": epochs, "backbone": sh["backbone"],
            "test_video_accuracy": report["video_accuracy"], "seconds_per_epoch": round(sum(per_epoch) / len(per_epoch), 2),
            "seconds": round(wall, 1)}  # fmt: skip


# --------------------------------------------------------------------------- inputs


def source_clips(args, sh: dict) -> list[Path]:
    """The RAVDESS audio-visual clips carried in ``--data`` (any .mp4 in ravdess_av/ or in it),
    else a generated 3 s clip of a face and a voice."""
    if args.data and not args.smoke:
        found = sorted((args.data / "ravdess_av").glob("*.mp4")) or sorted(args.data.glob("*.mp4"))
        if found:
            return found
    clip = args.work / "generated.mp4"
    if not clip.exists():
        from avhgr.synth import face_photo, place, tone, write_media

        size = (720, 1280) if not args.smoke else (120, 160)
        frames = [place(size, face_photo(), (size[1] / 2, size[0] / 2), 0.6 * size[0] / 512) for _ in range(30 if not args.smoke else 10)]
        write_media(clip, frames, 10, tone(3.0 if not args.smoke else 1.0, 48_000, 200))
    return [clip]


def generated_speech(root: Path) -> Path:
    """--smoke: a folder dataset of short generated voices in two classes (root/<label>/*.wav)."""
    from avhgr.synth import tone, write_media

    for i in range(8):
        label = ("happiness", "sadness")[i % 2]
        path = root / label / f"v{i}.wav"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_media(path, audio=tone(0.8, 16_000, 150 + 60 * (i % 2) + 5 * i), sample_rate=16_000)
    return root


# --------------------------------------------------------------------------- the run


def write_results(args, results: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    (args.out / "gpu_check.md").write_text(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"# bench/gpu_check.py {'--smoke ' if results['smoke'] else ''}({results['device']}, {results['date']})", "",
             "| part | figure |", "| --- | --- |"]  # fmt: skip
    for name in PARTS:
        r = results["parts"].get(name)
        if r is None:
            continue
        if "error" in r or "skipped" in r:
            lines.append(f"| {name} | {r.get('error') or r.get('skipped')} |")
            continue
        if name == "cache":
            lines.append(f"| preprocess ({r['workers']} workers, MTCNN on {r['device']}) | {r['videos_per_s']} videos/s, "
                         f"{r['windows_per_s']} windows/s ({r['videos']} videos in {r['seconds']} s, start-up included) |")  # fmt: skip
        elif name == "step":
            for key, v in r.items():
                if key.startswith("batch"):
                    lines.append(f"| training step, {r['backbone']}, {r['face_size']} px, {r['precision']}, {key.replace('batch', 'batch ')} | "
                                 f"(a) reference {v['reference_windows_per_s']}, (b) step {v['step_windows_per_s']}, (c) loop "
                                 f"{v['loop_windows_per_s']} windows/s; b/a = {v['b_over_a']}, c/b = {v['c_over_b']}; "
                                 f"host syncs per step {v['host_syncs_per_step']} |")  # fmt: skip
        elif name == "inference":
            lines.append(f"| inference, {r['backbone']}, batch {r['batch']} | {r['windows_per_s']} windows/s |")
        elif name == "predict":
            lines.append(f"| `avhgr predict` on {r['clip']} ({r['windows']} windows) | warm {r['warm_clip_s']} s; first clip (MTCNN load) "
                         f"{r['first_clip_s']} s; model load {r['model_load_s']} s |")  # fmt: skip
        elif name == "speech":
            lines.append(f"| {r['data']}, audio only, {r['backbone']}, {r['epochs']} epochs | test video accuracy "
                         f"{100 * r['test_video_accuracy']:.1f} % on {r['test_files']} files; {r['seconds_per_epoch']} s per epoch |")  # fmt: skip
    return "\n".join(lines) + "\n"


def run_part(args, name: str) -> dict:
    """One part in a child process of its own, killed at its time limit."""
    limit = SMOKE_LIMIT if args.smoke else LIMITS[name]
    result_file = args.work / f"{name}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--work", str(args.work)]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--data", str(args.data)] if args.data else []
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env={**os.environ, "PYTHONPATH": _pythonpath()})
    except subprocess.TimeoutExpired:
        return {"error": f"ran past its {limit} s limit"}
    if proc.returncode != 0 or not result_file.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"failed (exit {proc.returncode}): {' / '.join(tail)}"}
    result = json.loads(result_file.read_text())
    result["part_seconds"] = round(time.perf_counter() - t, 1)
    return result


def _pythonpath() -> str:
    """bench/ (for train_throughput) before what the caller has."""
    return os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="carried data: ravdess_av/*.mp4 clips, optionally ravdess_speech/Actor_*")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_out/gpu_check")))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="the same code paths on the CPU at tiny sizes")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"which parts, of {','.join(PARTS)}")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: run one part in this process
    args = ap.parse_args()
    sh = shape(args.smoke)
    if args.part:  # a child: one part, its result as JSON in the work folder
        sys.path.insert(0, str(HERE))
        result = globals()[f"part_{args.part}"](args, sh)
        (args.work / f"{args.part}.json").write_text(json.dumps(result))
        return
    import tempfile

    import torch

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here; use --smoke to run the code paths on the CPU")
    owned = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="gpu_check_")) if owned else args.work
    args.work.mkdir(parents=True, exist_ok=True)
    device = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    results = {"device": device, "smoke": args.smoke, "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "parts": {}}
    t0 = time.perf_counter()
    try:
        for name in args.parts.split(","):
            if name not in PARTS:
                sys.exit(f"error: unknown part {name!r}; parts: {', '.join(PARTS)}")
            results["parts"][name] = run_part(args, name)
            results["seconds"] = round(time.perf_counter() - t0, 1)
            write_results(args, results)  # after every part: a run cut short still reports
            print(f"{name}: {json.dumps(results['parts'][name])}", flush=True)
    finally:
        if owned:
            shutil.rmtree(args.work, ignore_errors=True)
    print(markdown(results))
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
