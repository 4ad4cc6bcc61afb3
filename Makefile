# The commands the README and CI use. Every target sets .venv up first (idempotent, quiet when done).
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup run test lint format bench

setup:
	@bash scripts/setup.sh

## run: the main job (for now a short demonstration of bnlab layers training a small model)
run: setup
	@$(PY) examples/demo.py

## test: the whole test suite
test: setup
	@$(PY) -m pytest -q

## lint: ruff (style and errors) and mypy (types)
lint: setup
	@$(PY) -m ruff check src tests examples benchmarks
	@$(PY) -m mypy

format: setup
	@$(PY) -m ruff check --fix src tests examples

## bench: the CPU benchmark suite (bnlab's backends against PyTorch, same run); results in benchmarks/results/
bench: setup
	@$(PY) -m benchmarks.run --device cpu --suite quick --json benchmarks/results/cpu-quick.json
