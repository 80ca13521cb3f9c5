# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv and install torch 2.13.0 first, so pip never
# resolves a CUDA build of torch, then this package with its test extra.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test install clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	mkdir -p out
	$(BIN)/longvid render --prompt "a red car drives through a city at night" --frames 121 --recipe glc --out out/demo.mp4

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out
