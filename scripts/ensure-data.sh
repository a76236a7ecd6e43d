#!/bin/sh
# Make sure Fashion-MNIST is on this machine, verified. Called by `make data`.
FMNIST=${FMNIST:-fmnist}
if "$FMNIST" data 2>/dev/null; then exit 0; fi
echo "Fashion-MNIST is missing or damaged; trying Debian's package dataset-fashion-mnist." >&2
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --reinstall dataset-fashion-mnist >/dev/null
elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo apt-get install -y -qq --reinstall dataset-fashion-mnist >/dev/null
fi
# Either it is there now, or this prints what is wrong and how to fix it, and fails.
exec "$FMNIST" data
