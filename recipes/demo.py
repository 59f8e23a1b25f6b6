"""`make demo`: train the digits teacher when it is missing, then distil a student with the default recipe.

Prints the student's accuracy and where the student and its model card are. Everything is written under
``outputs/`` (git-ignored), so a fresh clone stays clean. ``--update-catalogue-card`` (``make demo-card``)
also copies the student's card and training curve to the tracked catalogue, ``model_cards/digits-<recipe>/``.
"""

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

TEACHER_DIR = Path("outputs/teacher-digits")
CATALOGUE_DIR = Path("model_cards")


def recipe_arguments(recipe: str, update_catalogue_card: bool) -> list[str]:
    """Command-line arguments of the distillation recipe: the card goes to the catalogue only when asked."""
    arguments = ["--disable_tqdm", "true"]
    if update_catalogue_card:
        arguments += ["--model_card_dir", str(CATALOGUE_DIR / f"digits-{recipe}")]
    return arguments


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--update-catalogue-card",
        action="store_true",
        help="also copy the student's card and training curve to model_cards/digits-<recipe>/ (tracked files)",
    )
    options = parser.parse_args(argv)
    import train_teacher

    if not (TEACHER_DIR / "config.json").exists():
        print(f"no teacher at {TEACHER_DIR}: training one first (recipes/train_teacher.py)")
        train_teacher.main(["--output_dir", str(TEACHER_DIR), "--disable_tqdm", "true"])
    recipe = os.environ.get("DEMO_RECIPE", "funmatch")
    if not (HERE / f"{recipe}.py").exists():
        recipe = "distill"
    module = __import__(recipe)
    print(f"distilling with recipes/{recipe}.py")
    return module.main(recipe_arguments(recipe, options.update_catalogue_card))


if __name__ == "__main__":
    main()
