# Two commands do all set-up on a fresh machine (Python 3.11, 3.12 or 3.13):
#   make compare -> venv, pinned install, dataset, then the MLP trained every way, side by side
#   make test    -> the same set-up, then the whole test suite
# Also: make train (the hand-rolled MLP alone), make parity (the parity suite alone), make bench,
# make docs-test (the tour's code blocks alone).
# The newest supported Python found wins (scripts/find-python.sh: PATH, then pyenv's installs);
# `make test PYTHON=/path/to/python3.11` picks another. Each Python gets its own venv, .venv-3.X,
# installed from the pins for that Python in constraints.txt (environment markers).
PYTHON ?= $(shell sh scripts/find-python.sh)
PYVER  := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV   := .venv-$(PYVER)
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install data train compare bench test parity docs-test clean

$(STAMP): pyproject.toml constraints.txt
	@case "$(PYVER)" in 3.11|3.12|3.13) ;; *) \
	  echo "The pinned versions need Python 3.11, 3.12 or 3.13; '$(PYTHON)' is '$(PYVER)'." \
	    "Install one (Debian/Ubuntu: apt-get install python3.12 python3.12-venv) or run make PYTHON=/path/to/python3.X." >&2; exit 1;; esac
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
	$(BIN)/fmnist train --impl handrolled --model mlp --epochs 5 --out runs/train-mlp --overwrite

# The three implementations from the same weights and batch order, side by side.
compare: data
	$(BIN)/fmnist compare --model mlp --epochs 5 --out runs/compare-mlp

bench: data
	$(BIN)/fmnist bench

test: data
	$(BIN)/python -m pytest -q

parity: data
	$(BIN)/python -m pytest -q parity_tests

# The guided tour's code blocks (docs/tour/*.md), alone; `make test` runs them too.
docs-test: data
	$(BIN)/python -m pytest -q docs

clean:
	rm -rf .venv-3.* runs .pytest_cache
