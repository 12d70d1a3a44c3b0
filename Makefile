# Seed-compatible entry points. Each target creates the virtualenv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BUILD  ?= build
RUN_ARGS ?=
CACHE  := $(BUILD)/models/MobileNet/calibration.cache

.PHONY: run audit submission evaluate calibrate prepare preprocess_data test lint docs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps 'nvidia-pytriton>=0.7,<0.8'  # the tritonserver the tests start
	touch $@

prepare: $(VENV)/.installed
	$(PY) -m asyncbench prepare --build-dir $(BUILD)

preprocess_data: prepare
	$(PY) scripts/preprocess_data.py -d $(BUILD)/data -o $(BUILD)/preprocessed_data -b mobilenet

calibrate: $(VENV)/.installed
	$(PY) -m asyncbench calibrate --build-dir $(BUILD) $(RUN_ARGS)

# Runs use the calibration cache; it is made once here when absent.
$(CACHE): | $(VENV)/.installed
	$(PY) -m asyncbench calibrate --build-dir $(BUILD)

# A LoadGen run (default: a quick Offline run of the INT8 model on the CPU, embedded photos).
run: $(VENV)/.installed $(CACHE)
	$(PY) -m asyncbench run --build-dir $(BUILD) $(RUN_ARGS)

# A compliance test against this system's own runs, like the seed's run_audit_test01/04/05:
# make audit TEST=TEST01 RUN_ARGS="--scenario Server"
TEST ?= TEST01
audit: $(VENV)/.installed $(CACHE)
	$(PY) -m asyncbench audit $(TEST) --build-dir $(BUILD) $(RUN_ARGS)

# A submission folder from this system's runs and audits (running what is missing), then its check:
# make submission RUN_ARGS="--system NAME --out DIR --scenario Offline"
submission: $(VENV)/.installed $(CACHE)
	$(PY) -m asyncbench submission --build-dir $(BUILD) $(RUN_ARGS)

# Accuracy of both engine models fed directly (no LoadGen), with INT8/fp32 agreement.
evaluate: $(VENV)/.installed $(CACHE)
	$(PY) -m asyncbench evaluate --build-dir $(BUILD) $(RUN_ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q

# Lint and type check (CI runs both before the tests).
lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m mypy

# The documentation site (docs/, mkdocs.yml), built with --strict: a broken link or anchor fails (CI runs it).
docs: $(VENV)/.installed
	$(PY) -m mkdocs build --strict --site-dir $(BUILD)/site
