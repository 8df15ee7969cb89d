# The two commands of the README: `make demo` and `make test`. Both create .venv when missing and
# install the package with its pinned PyTorch, so a fresh machine needs nothing installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow install bench bench-proxies bench-threads bench-data bench-ddp bench-executors bench-preprocess bench-halving bench-levers bench-jobs clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/expertise demo

# The suite without the end-to-end tests marked slow (Ray, torchrun, the README's commands, fresh
# interpreters), which `make test-slow` runs; CI (.ci/run) runs both.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python -m perf.run

# Proxy scoring at pool scale: its own section of BENCHMARKS.md, ~10 minutes on two cores.
bench-proxies: $(STAMP)
	$(BIN)/python -m perf.proxies_scale

# A short fine-tune with 1 thread and the default, alone and beside a busy process: its own section of
# BENCHMARKS.md, a few minutes; run it on an otherwise idle machine.
bench-threads: $(STAMP)
	$(BIN)/python -m perf.threads

# Upstream data from disk: the WordNet hierarchy of ImageNet-21k; its own section of BENCHMARKS.md.
bench-data: $(STAMP)
	$(BIN)/python -m perf.upstream_data

# Data-parallel step time: 2 gloo ranks under torchrun against 1 process, the same global batch;
# its own section of BENCHMARKS.md, a few minutes; run it on an otherwise idle machine.
bench-ddp: $(STAMP)
	$(BIN)/python -m perf.ddp

# The tiny benchmark with the local executor against Ray with 2 workers on this machine: its own
# section of BENCHMARKS.md; builds runs/perf_executors/library once; run it on an otherwise idle machine.
bench-executors: $(STAMP)
	$(BIN)/python -m perf.executors

# Per-member preprocessing: embedding throughput of a 224-px timm model on the CPU, our path
# against timm's bare forward; its own section of BENCHMARKS.md. Run it on an otherwise idle machine.
bench-preprocess: $(STAMP)
	$(BIN)/python -m perf.preprocess

# Full scoring against successive halving on a 12-member heterogeneous pool: its own
# section of BENCHMARKS.md. Run it on an otherwise idle machine.
bench-halving: $(STAMP)
	$(BIN)/python -m perf.halving

# Where the cpu demo's training time goes and the levers tried to cut it (batching the bank, channels-last,
# threads against worker processes, torch.compile, bf16): its own section of BENCHMARKS.md, about 10
# minutes. Run it on an otherwise idle machine.
bench-levers: $(STAMP)
	$(BIN)/python -m perf.demo_levers

# The demo from scratch with --jobs 1 and 2, and with 2 beside a busy process: its own section of
# BENCHMARKS.md, about 50 minutes on two cores. Run it on an otherwise idle machine.
bench-jobs: $(STAMP)
	$(BIN)/python -m perf.demo_jobs

clean:
	rm -rf $(VENV) runs .pytest_cache
