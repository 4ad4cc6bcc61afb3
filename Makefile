# The commands the README and CI use. Every target sets .venv up first (idempotent, quiet when done).
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup run test lint format bench

setup:
	@bash scripts/setup.sh

## run: the main job: Figure 1 of the paper, quick version on MNIST-5k (a few minutes on 2 CPU cores); it prints
## where the report is. The full run: .venv/bin/bnlab run fig1 --set dataset=fashion-mnist (docs/experiments.md)
run: setup
	@.venv/bin/bnlab run fig1 --quick

## test: the whole test suite
test: setup
	@$(PY) -m pytest -q

## lint: ruff (style and errors) and mypy (types)
lint: setup
	@$(PY) -m ruff check src tests examples benchmarks scripts
	@$(PY) -m mypy

format: setup
	@$(PY) -m ruff check --fix src tests examples benchmarks scripts

## bench: the CPU benchmarks (kernels, engine overhead, folding small models and transformers' vision models; each
## against its competitor in the same run); results in benchmarks/results/
bench: setup
	@$(PY) -m benchmarks.run --device cpu --suite quick --json benchmarks/results/cpu-quick.json
	@$(PY) -m benchmarks.engine_overhead --json benchmarks/results/engine-overhead.json
	@$(PY) benchmarks/fold_speedup.py --json benchmarks/results/fold-speedup.json
	@$(PY) -m benchmarks.fold_real_models --json benchmarks/results/fold-real-models.json
