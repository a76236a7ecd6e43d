"""Runs the tour's code blocks under pytest (Sybil): every ```python block of docs/tour/*.md.

A block whose lines start with `>>>` is a doctest: what it prints must match the lines under it.
Other blocks just run (and fail on an exception or a failed `assert`). The blocks of one page share
one namespace, in order, as a reader running them would. `make docs-test` runs these alone.
"""

import doctest

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(doctest_optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE),
             SkipParser()],
    patterns=["tour/*.md"],
).pytest()
