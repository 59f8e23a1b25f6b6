"""`make demo`: train the digits teacher when it is missing, then distil a student with the default recipe.

Prints the student's accuracy and where the student and its model card are.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

TEACHER_DIR = Path("outputs/teacher-digits")


def main():
    import train_teacher

    if not (TEACHER_DIR / "config.json").exists():
        print(f"no teacher at {TEACHER_DIR}: training one first (recipes/train_teacher.py)")
        train_teacher.main(["--output_dir", str(TEACHER_DIR), "--disable_tqdm", "true"])
    recipe = os.environ.get("DEMO_RECIPE", "funmatch")
    if not (HERE / f"{recipe}.py").exists():
        recipe = "distill"
    module = __import__(recipe)
    print(f"distilling with recipes/{recipe}.py")
    # The student's card (and training curve) also goes to the catalogue of released students.
    module.main(["--disable_tqdm", "true", "--model_card_dir", f"model_cards/digits-{recipe}"])


if __name__ == "__main__":
    main()
