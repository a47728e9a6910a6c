# hlrp_ros: the two commands are `make demo` (the main job) and `make test`.
# Both set up whatever is missing first (see env/setup.sh), so each is one command
# on a fresh machine with Python 3.11 and access to the package registries.
SHELL := /bin/bash
RUN := env/run.sh

# Extra arguments, e.g. `make demo DEMO_ARGS=--keep-running` or `make test PYTEST_ARGS="-k chunk"`.
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup test demo bench clean distclean

setup:
	@env/setup.sh

test: setup
	@$(RUN) pytest test $(PYTEST_ARGS)

demo: setup
	@$(RUN) python -m hlrp_ros.tools.demo $(DEMO_ARGS)

bench: setup
	@$(RUN) python benchmarks/bench_model.py
	@$(RUN) python benchmarks/bench_nodes.py
	@$(RUN) python benchmarks/bench_demo_policy.py

clean:
	rm -rf build install log .pytest_cache

# Also removes the virtualenv (it lives outside the checkout; .venv links to it).
distclean: clean
	@if [ -L .venv ]; then rm -rf "$$(readlink .venv)"; fi
	rm -f .venv
