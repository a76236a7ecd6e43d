# Two commands do all set-up on a fresh machine (Python 3.11):
#   make compare -> venv, pinned install, dataset, then the MLP trained three ways, side by side
#   make test    -> the same set-up, then the whole test suite
# Also: make train (the hand-rolled MLP alone), make parity (the parity suite alone), make bench.
# Python 3.11 (JAX 0.11 dropped it, the pinned JAX 0.10 needs it): python3.11 if present, else python3.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install data train compare bench test parity clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
	  { echo "The pinned versions need Python 3.11; $(PYTHON) is $$($(PYTHON) --version 2>&1)." \
	    "Install python3.11 (Debian/Ubuntu: apt-get install python3.11 python3.11-venv) or run make PYTHON=/path/to/python3.11." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[keras,test]'
	touch $(STAMP)

install: $(STAMP)

# Finds and verifies Fashion-MNIST; installs Debian's dataset-fashion-mnist when it is missing
# and apt-get can run, otherwise says exactly what to do.
data: install
	@FMNIST="$(BIN)/fmnist" sh scripts/ensure-data.sh

train: data
	$(BIN)/fmnist train --impl handrolled --model mlp --epochs 5 --out runs/train-mlp

# The three implementations from the same weights and batch order, side by side.
compare: data
	$(BIN)/fmnist compare --model mlp --epochs 5 --out runs/compare-mlp

bench: data
	$(BIN)/fmnist bench

test: data
	$(BIN)/python -m pytest -q

parity: data
	$(BIN)/python -m pytest -q parity_tests

clean:
	rm -rf $(VENV) runs .pytest_cache
