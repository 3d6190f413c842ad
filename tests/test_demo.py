"""The built-in demo corpus."""

import hashlib

from avhgr.demo import CorpusSpec, build_corpus


def test_demo_corpus_is_byte_identical_from_run_to_run(tmp_path):
    """Same seed, same files: otherwise `make demo` reports other figures each time. (With
    320 px frames libx264 gave different files for about one video in seven.)"""
    digests = []
    for run in ("a", "b"):
        out = build_corpus(tmp_path / run, CorpusSpec(per_class=4, duration=1.0)).parent
        digests.append({p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.mp4"))})
    assert len(digests[0]) == 24
    assert digests[0] == digests[1]
