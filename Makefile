# The two commands: `make run` (set up, then the main job) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
LLM4MSR := $(VENV)/bin/llm4msr
# installed once per change of the lock or setup.py; re-running make installs nothing
STAMP := $(VENV)/.installed
RUN_DIR ?= runs
SOURCE ?= movielens-latest-small
CONFIG ?= configs/default.yaml
# test processes, each taking whole files (module fixtures such as the e2e pipeline run stay in one):
# 2 on the 2-core CI machine, 10m45 against 16m42 in one process
TEST_WORKERS ?= 2

.PHONY: setup run test test-fast lock bench clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml setup.py scripts/install-env
	@scripts/install-env $(VENV)
	@touch $@

run: setup
	$(LLM4MSR) data prepare --source $(SOURCE) --out $(RUN_DIR)/data/$(SOURCE)
	$(LLM4MSR) pipeline run --config $(CONFIG) --data $(RUN_DIR)/data/$(SOURCE) --root $(RUN_DIR)/pipeline \
	  --serving-dir $(RUN_DIR)/serving/llm4msr --report $(RUN_DIR)/report.json
	$(LLM4MSR) recommend --embedded-server --scenario all --k 5 --data $(RUN_DIR)/data/$(SOURCE) \
	  --model-dir $(RUN_DIR)/serving/llm4msr

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

lock:
	$(VENV)/bin/uv pip compile pyproject.toml requirements-dev.in --python-version 3.10 \
	  --python-platform x86_64-manylinux_2_36 -o requirements.lock

clean:
	rm -rf $(VENV) $(RUN_DIR) .pytest_cache
