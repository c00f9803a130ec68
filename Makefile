# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 7600
MODEL  := models/u2netp.onnx

.PHONY: install run test clean

install: $(VENV)/.installed $(MODEL)

# Re-installs whenever pyproject.toml changes. Importing pymatting once here lets numba
# compile and cache its kernels at install time instead of on the first matting request.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -c "import pymatting"
	touch $@

$(MODEL): | $(VENV)/.installed
	$(PY) -m service.fetch_model --dest $(MODEL)

run: install
	$(PY) -m service --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .data .pytest_cache
