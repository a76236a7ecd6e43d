#!/bin/sh
# Print the path of a working Python interpreter the project supports, newest first, or fail.
#   sh scripts/find-python.sh          newest of 3.13, 3.12, 3.11
#   sh scripts/find-python.sh 3.11     that version only
# A name on PATH counts only if it runs: pyenv's `python3.13` shim is on PATH but fails unless
# PYENV_VERSION names it, so pyenv's own installs ($(pyenv root)/versions/3.13*/bin) are tried too.
versions=${1:-"3.13 3.12 3.11"}
works() { [ -n "$1" ] && "$1" -c 'import sys, venv' >/dev/null 2>&1; }
for v in $versions; do
    candidate=$(command -v "python$v" 2>/dev/null)
    if works "$candidate"; then echo "$candidate"; exit 0; fi
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    for candidate in "$root"/versions/"$v"*/bin/"python$v" /usr/local/bin/"python$v" /usr/bin/"python$v"; do
        if works "$candidate"; then echo "$candidate"; exit 0; fi
    done
done
# Last resort: python3 itself, if it is one of the supported versions.
if works python3 && python3 -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' not in '$versions'.split())"; then
    command -v python3; exit 0
fi
echo "no Python among $versions found (looked on PATH and under pyenv); install one or run make PYTHON=/path/to/python3.X" >&2
exit 1
