# The commands the README and CI use. Every target sets .venv up first (idempotent, quiet when done).
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup run test lint format bench

setup:
	@bash scripts/setup.sh

## run: the tour: the quick version of every experiment (bnlab run all --quick; within 5 minutes on 2 CPU cores),
## then runs/tour.html with each one's verdicts, time and report. One experiment, full: .venv/bin/bnlab run variance
## (docs/experiments.md)
run: setup
	@.venv/bin/bnlab run all --quick

## test: the whole test suite
test: setup
	@$(PY) -m pytest -q

## lint: ruff (style and errors) and mypy (types)
lint: setup
	@$(PY) -m ruff check src tests examples benchmarks scripts
	@$(PY) -m mypy

format: setup
	@$(PY) -m ruff check --fix src tests examples benchmarks scripts

## bench: the CPU benchmarks (kernels, engine overhead, per-call overhead, folding small models and transformers'
## vision models, SyncBatchNorm on 2 gloo processes; each against its competitor in the same run); results in
## benchmarks/results/. Run it on a quiet machine: the kernel suite also regenerates auto's rules
## (src/bnlab/kernels/cpu/auto_rules.py) and the README's performance table.
bench: setup
	@$(PY) -m benchmarks.refresh
	@$(PY) -m benchmarks.engine_overhead --json benchmarks/results/engine-overhead.json
	@$(PY) benchmarks/fold_speedup.py --json benchmarks/results/fold-speedup.json
	@$(PY) -m benchmarks.fold_real_models --json benchmarks/results/fold-real-models.json
	@$(PY) -m benchmarks.sync_overhead --json benchmarks/results/sync-overhead.json
	@$(PY) -m benchmarks.call_overhead --json benchmarks/results/call-overhead.json
