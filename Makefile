# Two commands matter: `make sim` and `make test`. Each creates .venv/ on first use
# and reinstalls the project only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FPGA_STAMP := $(VENV)/.installed-fpga
VERILOG := build/ept_walker.v
# unit parameters for verilog/lint/synth, e.g. make verilog PARAMS="--maxphyaddr 39"
PARAMS ?=

.PHONY: sim test test-all ruff bench clean distclean venv verilog lint synth wave \
        fuzz races soak formal reliability regress

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# the fpga extra (yowasp yosys + nextpnr) only for synthesis and the slow tests
$(FPGA_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,fpga]'
	touch $(FPGA_STAMP)

venv: $(STAMP)

# the fastest backend that runs here by default (run --backend auto: Verilator, built once
# into the per-user cache, else pysim with one line saying why);
# make sim BACKEND=rtl|verilator|model ARGS="--accesses 20000 --seed 3": both reach the command
BACKEND ?=
ARGS ?=
sim: $(STAMP)
	$(PY) -m sim run $(if $(BACKEND),--backend $(BACKEND)) $(ARGS)

bench: $(STAMP)
	$(PY) -m sim bench

# -n auto: one pytest worker per core (pytest-xdist)
test: $(STAMP)
	$(PY) -m pytest -q -n auto -m "not slow"

test-all: $(FPGA_STAMP)
	$(PY) -m pytest -q -n auto

ruff: $(STAMP)
	$(PY) -m ruff check .

# a short run with a waveform, opened in GTKWave (or the command printed without a display);
# WORKLOAD=path/scenario.json replays a scenario, or WORKLOAD="--accesses 300 --seed 2";
# BACKEND=verilator writes FST instead of VCD (default rtl: pysim, VCD)
WORKLOAD ?=
wave: $(STAMP)
	$(PY) -m sim wave --backend $(or $(BACKEND),rtl) $(WORKLOAD) $(ARGS)

# reliability: each writes its section of build/reliability/report.json
WALKS ?= 20000
fuzz: $(STAMP)
	$(PY) -m sim fuzz --backend verilator --faults --walks $(WALKS) --quiet
races: $(STAMP)
	$(PY) -m sim races --backend verilator --quiet
soak: $(STAMP)
	$(PY) -m sim soak --quiet
formal: $(FPGA_STAMP)
	$(PY) -m sim formal
reliability: fuzz races soak formal

# the regression on Dask: the default spec (a million fuzzed walks, the races on both backends,
# a soak) on an embedded cluster, one worker per core; it also writes the fuzz/races/soak
# sections of build/reliability/report.json. SWEEP="--scheduler tcp://HOST:8786" or
# SWEEP="--jobqueue slurm --queue Q --workers 20" runs the same spec on a cluster or a grid
SPEC ?= regress/default.toml
SWEEP ?=
regress: $(STAMP)
	$(PY) -m sim sweep $(SPEC) $(SWEEP)

# not file targets: PARAMS may change between runs, and generation takes seconds
verilog: $(STAMP)
	$(PY) -m sim verilog --out $(VERILOG) $(PARAMS)

lint: verilog
	$(PY) -m sim lint $(VERILOG)

synth: $(FPGA_STAMP)
	$(PY) -m sim synth $(PARAMS)

clean:
	rm -rf build .pytest_cache .hypothesis
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
