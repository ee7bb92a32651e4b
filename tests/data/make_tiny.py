"""Writes tests/data/tiny: a small synthetic English->German corpus for smoke tests.

A toy grammar with German gender and case agreement, so a model must learn
more than a word-for-word lexicon. Run it from the repository root; the output
is committed, so tests never need to run it.
"""

import random
from pathlib import Path

NOUNS = {  # english: (german, gender)
    "man": ("Mann", "m"), "woman": ("Frau", "f"), "child": ("Kind", "n"), "dog": ("Hund", "m"),
    "cat": ("Katze", "f"), "horse": ("Pferd", "n"), "boy": ("Junge", "m"), "girl": ("Mädchen", "n"),
    "ball": ("Ball", "m"), "car": ("Auto", "n"), "street": ("Straße", "f"), "house": ("Haus", "n"),
}
ADJECTIVES = {"red": "rot", "small": "klein", "old": "alt", "young": "jung", "big": "groß", "black": "schwarz"}
VERBS = {"sees": "sieht", "likes": "mag", "finds": "findet", "watches": "beobachtet", "pulls": "zieht"}
ARTICLES = {("nom", "m"): "der", ("nom", "f"): "die", ("nom", "n"): "das",
            ("acc", "m"): "den", ("acc", "f"): "die", ("acc", "n"): "das"}
ENDINGS = {("nom", "m"): "e", ("nom", "f"): "e", ("nom", "n"): "e",
           ("acc", "m"): "en", ("acc", "f"): "e", ("acc", "n"): "e"}


def phrase(rng: random.Random, case: str) -> tuple[str, str]:
    noun = rng.choice(sorted(NOUNS))
    german, gender = NOUNS[noun]
    words_en, words_de = ["the"], [ARTICLES[case, gender]]
    if rng.random() < 0.6:
        adjective = rng.choice(sorted(ADJECTIVES))
        words_en.append(adjective)
        words_de.append(ADJECTIVES[adjective] + ENDINGS[case, gender])
    return " ".join(words_en + [noun]), " ".join(words_de + [german])


def sentence(rng: random.Random) -> tuple[str, str]:
    subject_en, subject_de = phrase(rng, "nom")
    object_en, object_de = phrase(rng, "acc")
    verb = rng.choice(sorted(VERBS))
    en = f"{subject_en} {verb} {object_en} ."
    de = f"{subject_de} {VERBS[verb]} {object_de} ."
    return en[0].upper() + en[1:], de[0].upper() + de[1:]


def main() -> None:
    rng = random.Random(7)
    out = Path(__file__).parent / "tiny"
    out.mkdir(exist_ok=True)
    seen = set()
    pairs = []
    while len(pairs) < 600:
        pair = sentence(rng)
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    for split, chunk in (("train", pairs[:500]), ("valid", pairs[500:550]), ("test", pairs[550:])):
        for index, lang in enumerate(("en", "de")):
            (out / f"{split}.{lang}").write_text("".join(p[index] + "\n" for p in chunk), encoding="utf-8")


if __name__ == "__main__":
    main()
