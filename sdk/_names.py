"""Generated run names and ids."""

from __future__ import annotations

import secrets

_ADJECTIVES = (
    "amber", "bold", "brisk", "calm", "clever", "cosmic", "crisp", "daring", "eager", "fancy",
    "gentle", "glad", "golden", "happy", "icy", "jolly", "keen", "lively", "lucky", "mellow",
    "misty", "noble", "proud", "quiet", "rapid", "royal", "shiny", "silent", "smooth", "snowy",
    "solar", "stellar", "swift", "tidy", "vivid", "wild", "wise", "young", "zesty", "zen",
)  # fmt: skip
_NOUNS = (
    "aurora", "badger", "breeze", "canyon", "cedar", "comet", "coral", "dawn", "delta", "dune",
    "ember", "falcon", "fern", "fjord", "forest", "galaxy", "glacier", "harbor", "heron", "island",
    "lagoon", "lotus", "meadow", "meteor", "nebula", "ocean", "orbit", "otter", "pine", "planet",
    "prairie", "river", "sky", "sparrow", "spring", "star", "summit", "thunder", "valley", "wave",
)  # fmt: skip
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def random_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"


def random_id(length: int = 8) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))
