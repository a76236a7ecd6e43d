"""`fmnist explain TOPIC`: each pitfall of the project as a live demonstration.

A topic computes its numbers on this machine, prints a short explanation with them, and draws one
picture (`<out>/<topic>.png`). Each is a function `topic(out: Path, say) -> dict` in one of the
modules of this package; the dict holds the numbers (tests assert them) and "picture", the PNG's path.

This module only names the topics, so `fmnist explain --list` imports no JAX; `run` imports the
topic's module when it is asked for. `add_parser` and `command` are the `fmnist explain` subcommand
(`fmnist.app.cli` registers them; they live here to keep cli.py short).
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path("runs") / "explain"


@dataclasses.dataclass(frozen=True)
class Topic:
    name: str
    module: str    # in fmnist.app.explain
    function: str
    summary: str


TOPICS = {t.name: t for t in (
    Topic("softmax-overflow", "numerics", "softmax_overflow",
          "naive exp/sum softmax at a logit of 1000 vs max-subtracted softmax, log(p + eps) vs loss from logits"),
    Topic("adam-epsilon", "adam_and_init", "adam_epsilon",
          "Keras's epsilon-hat Adam vs the paper's (optax.adam): effective eps(t) and the first step vs |g|"),
    Topic("initialisers", "adam_and_init", "initialisers",
          "Flax lecun_normal vs Keras glorot_uniform vs the post's he_normal, std per layer of the CNN"),
    Topic("pooling-defaults", "shapes", "pooling_defaults",
          "nn.max_pool stride 1 vs MaxPooling2D stride 2, Conv2D 'valid' vs nn.Conv 'SAME': the flatten size"),
    Topic("pixel-scaling", "numerics", "pixel_scaling",
          "x/255 vs x*(1/255) in float32: how many of the 256 pixel values differ, and by how many ulps"),
    Topic("keras-shuffle", "training", "keras_shuffle",
          "seeded Keras fit(shuffle=True) replays one permutation every epoch; the shared order does not"),
    Topic("relu-derivative", "gradients", "relu_derivative",
          "relu'(0) in JAX, the hand-rolled relu and TF; how many CNN pre-activations are exactly 0"),
    Topic("maxpool-ties", "gradients", "maxpool_ties",
          "first-max vs split-evenly max-pool gradients at tied windows, on a real batch"),
    Topic("chaos", "training", "chaos",
          "two MLP runs from weights 1e-7 apart, same batches: the step where they part, and how far"),
)}


class TopicUnavailable(RuntimeError):
    """A topic cannot run here (e.g. Keras is not installed); the message says why."""


def list_lines() -> list[str]:
    """One line per topic: its name and what it shows."""
    width = max(map(len, TOPICS))
    return [f"{t.name:<{width}}  {t.summary}" for t in TOPICS.values()]


def get(name: str) -> Topic:
    """The topic called `name`; a one-line ValueError with the valid names otherwise."""
    try:
        return TOPICS[name]
    except KeyError:
        raise ValueError(f"unknown topic {name!r}; choose one of: {', '.join(TOPICS)} "
                         "(or `fmnist explain --list`)") from None


def run(name: str, out: str | Path = DEFAULT_OUT, stream=None) -> dict:
    """Run topic `name`: print its explanation to `stream` (stdout), write `<out>/<name>.png`,
    return its numbers (with "picture" and "seconds", the wall time of the whole demonstration)."""
    topic = get(name)
    stream = stream or sys.stdout
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    start = time.perf_counter()
    say(f"== {topic.name}: {topic.summary}")
    module = importlib.import_module(f"{__name__}.{topic.module}")
    result = getattr(module, topic.function)(out, say)
    result["seconds"] = time.perf_counter() - start
    say(f"Picture: {result['picture']}  ({result['seconds']:.1f} s on this machine, imports included)")
    return result


def add_parser(sub) -> None:
    """The `explain` subcommand, added to `fmnist`'s subparsers `sub`."""
    p = sub.add_parser("explain", help="a pitfall of the project as a live demonstration: numbers and a picture",
                       description="Run one pitfall of the project as a live demonstration: print its numbers, "
                                   "measured now on this machine, with a short explanation, and draw one "
                                   "picture, OUT/TOPIC.png. Seconds each. `all` runs every topic.")
    p.add_argument("topic", nargs="?", default=None, metavar="TOPIC",
                   help=f"one of: {', '.join(TOPICS)}, or all (none: list the topics)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"picture directory (default {DEFAULT_OUT})")
    p.add_argument("--list", action="store_true", help="list the topics, one line each")


def command(args) -> int:
    """`fmnist explain [TOPIC] [--out DIR] [--list]`: exit 0, 2 for an unknown topic (ValueError,
    reported by the caller), 1 when a topic cannot run here (TopicUnavailable)."""
    if args.list or args.topic is None:
        print("\n".join(list_lines()))
        return 0
    names = list(TOPICS) if args.topic == "all" else [get(args.topic).name]
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot use {args.out} as the output directory: {e.strerror}") from None
    status = 0
    for k, name in enumerate(names):
        if k:
            print()
        try:
            run(name, args.out)
        except TopicUnavailable as e:
            print(f"fmnist explain: {name}: {e}", file=sys.stderr)
            status = 1
    return status
