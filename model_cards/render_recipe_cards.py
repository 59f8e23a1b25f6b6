"""Pre-release cards of the paper recipes: what each student's card will say, with the paper's expected numbers.

    .venv/bin/python model_cards/render_recipe_cards.py

For every recipe in ``RECIPES`` whose config exists in ``recipes/configs/``, the card is rendered by the same
code as a trained student's (``hf_distill.model_card.render_model_card``): metadata, model details, methods
and BibTeX, hyper-parameters from the YAML, usage and limitations. Parameter counts come from the timm
architectures. Nothing has been measured yet, so the metadata carries no eval results; the "Results" section
lists the numbers the paper reports for the recipe instead. Training the recipe writes the measured card
(``README.md`` beside the student; ``--model_card_dir model_cards/<name>`` copies it here).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import timm
import yaml
from huggingface_hub import ModelCard

from hf_distill.config import DistillationConfig
from hf_distill.model_card import StudentCardInfo, render_model_card
from hf_distill.release import methods_of, training_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
OUT = Path(__file__).resolve().parent

CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()

WANG_2022 = 'Wang et al., *What Makes a "Good" Data Augmentation in Knowledge Distillation*'

#: config file -> card directory name, recipe script, teacher architecture(s) (for parameter counts), class
#: names, devices the config assumes, expected-results rows (setting, top-1 %, top-5 % or None), their source.
IMAGENET_LABELS = lambda: [d.split(",")[0] for d in timm.data.ImageNetInfo().label_descriptions()]  # noqa: E731
BEYER_2022 = "Beyer et al., *Knowledge distillation: A good teacher is patient and consistent* (CVPR 2022)"
BIG_VISION_LAUNCH = "accelerate launch --config_file recipes/accelerate_configs/ddp.yaml"

RECIPES: dict[str, dict] = {
    "funmatch_imagenet_bit.yaml": {
        "name": "resnet50-bit-imagenet-funmatch",
        "script": "recipes/funmatch.py",
        "teacher_arch": ["resnetv2_152x2_bit"],
        "labels": IMAGENET_LABELS,
        "world_size": 8,  # global batch 4096 = 8 devices x 512, as the config says
        "expected": [
            ("FunMatch, 9600 epochs (`--num_train_epochs 9600`)", 82.31, None),
        ],
        "source": f"{BEYER_2022}: BiT-M R152x2 -> BiT-ResNet-50, ImageNet-1k validation. This config runs 1200 "
        "epochs, big_vision's middle ground; accuracy keeps rising with the schedule.",
        "launch": BIG_VISION_LAUNCH,
    },
    "funmatch_imagenet_ensemble.yaml": {
        "name": "resnet50-bit-imagenet-funmatch-ensemble",
        "script": "recipes/funmatch.py",
        "teacher_arch": ["resnetv2_152x2_bit", "resnetv2_152x2_bit"],
        "labels": IMAGENET_LABELS,
        "world_size": 8,
        "expected": [
            ("FunMatch from the 224 px + 384 px teacher ensemble, 9600 epochs (this config)", 82.82, None)
        ],
        "source": f"{BEYER_2022}, ImageNet-1k validation, ResNet-50 student at 224 px.",
        "launch": BIG_VISION_LAUNCH,
    },
    "funmatch_mobilenetv3.yaml": {
        "name": "mobilenetv3-large-imagenet-funmatch",
        "script": "recipes/funmatch.py",
        "teacher_arch": ["resnetv2_152x2_bit"],
        "labels": IMAGENET_LABELS,
        "world_size": 8,
        "expected": [
            ("FunMatch, 300 epochs (this config)", 74.60, None),
            ("FunMatch, 1200 epochs (`--num_train_epochs 1200`)", 76.31, None),
        ],
        "source": f"{BEYER_2022}, Sec. 5.4: BiT-M R152x2 -> MobileNetV3-Large from scratch, ImageNet-1k validation.",
        "launch": BIG_VISION_LAUNCH,
    },
    "tlcutmix_imagenet_r34_r18.yaml": {
        "name": "resnet18-imagenet-tlcutmix-pick",
        "script": "recipes/tlcutmix.py",
        "teacher_arch": ["resnet34"],
        "labels": IMAGENET_LABELS,
        "world_size": 8,  # batch 256 = 8 GPUs x 32, as the config's header says
        "expected": [
            ("KD (100 epochs)", 70.66, 89.88),
            ("KD + TLCutMix (100 epochs)", 71.05, 90.36),
            ("KD + TLCutMix + pick (100 epochs, this config)", 70.78, 90.04),
            ("KD + TLCutMix + pick (200 epochs, `--num_train_epochs 200`)", 71.76, 90.58),
            ("Teacher: torchvision ResNet-34", 73.31, None),
        ],
        "source": f"{WANG_2022}, Table 5 (ImageNet-1k validation, ResNet-34 -> ResNet-18, the same pair as here).",
        "launch": "accelerate launch --config_file recipes/accelerate_configs/ddp.yaml",
    },
    "tlcutmix_cifar100.yaml": {
        "name": "resnet18-cifar100-tlcutmix-pick",
        "script": "recipes/tlcutmix.py",
        "teacher_arch": ["resnet50"],
        "labels": lambda: CIFAR100_NAMES,
        "expected": [
            ("KD", 73.33, None),
            ("KD + TLCutMix", 74.91, None),
            ("KD + TLCutMix + pick (this config)", 74.78, None),
            ("KD + TLCutMix + pick, 960 epochs", 75.12, None),
        ],
        "source": (
            f"{WANG_2022}, Table 3 (CIFAR-100 test, ResNet32x4 -> ResNet8x4, mean of 3 runs). The paper's CIFAR "
            "networks are not timm architectures; this recipe's ResNet-50 -> ResNet-18 pair sees 32x32 inputs "
            "through ImageNet stems, so expect lower absolute numbers and compare the ordering of the settings."
        ),
        "launch": "accelerate launch",
    },
    "tlcutmix_tinyimagenet.yaml": {
        "name": "resnet18-tinyimagenet-tlcutmix-pick",
        "script": "recipes/tlcutmix.py",
        "teacher_arch": ["resnet50"],
        "labels": lambda: [f"class {i}" for i in range(200)],  # the dataset's wnids; only the count is shown
        "expected": [
            ("KD", 55.67, None),
            ("KD + TLCutMix", 56.41, None),
            ("KD + TLCutMix + pick (this config)", 56.82, None),
            ("KD + TLCutMix + pick, 480 epochs", 57.54, None),
        ],
        "source": (
            f"{WANG_2022}, Table 4 (Tiny ImageNet validation, ResNet32x4 -> ResNet8x4). This recipe's ResNet-50 "
            "-> ResNet-18 pair differs; compare the ordering of the settings, not the values."
        ),
        "launch": "accelerate launch",
    },
}


def config_values(path: Path) -> SimpleNamespace:
    """A recipe YAML over DistillationConfig's defaults, as attributes (no TrainingArguments set-up: the
    configs ask for GPUs and datasets this script does not need)."""
    values = {}
    for f in dataclasses.fields(DistillationConfig):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    values.update(yaml.safe_load(path.read_text()))
    return SimpleNamespace(**values)


def parameters(architecture: str, num_classes: int) -> int:
    model = timm.create_model(architecture, num_classes=num_classes, pretrained=False)
    return sum(p.numel() for p in model.parameters())


def expected_section(config_file: str, recipe: dict) -> str:
    has_top5 = any(top5 is not None for _, _, top5 in recipe["expected"])
    header = "| Setting | Top-1 accuracy |" + (" Top-5 accuracy |" if has_top5 else "")
    rule = "|---|---:|" + ("---:|" if has_top5 else "")
    rows = [
        f"| {setting} | {top1:.2f}% |"
        + ((f" {top5:.2f}% |" if top5 is not None else " – |") if has_top5 else "")
        for setting, top1, top5 in recipe["expected"]
    ]
    return "\n".join(
        [
            "## Results",
            "",
            "**Pre-release card.** This student has not been trained yet: the card was rendered from "
            f"`recipes/configs/{config_file}` by `model_cards/render_recipe_cards.py`. Training the recipe replaces "
            "it with the measured card (student and teacher accuracy, agreement, throughput, training curve):",
            "",
            "```bash",
            f"{recipe['launch']} {recipe['script']} --config recipes/configs/{config_file} \\",
            f"  --model_card_dir model_cards/{recipe['name']}",
            "```",
            "",
            "Expected top-1 accuracy, as reported by the paper:",
            "",
            header,
            rule,
            *rows,
            "",
            f"Source: {recipe['source']}",
            "",
            "",
        ]
    )


def render(config_file: str, recipe: dict) -> ModelCard:
    args = config_values(CONFIGS / config_file)
    labels = [str(name) for name in recipe["labels"]()]
    teachers = args.teacher_model_name_or_path
    teachers = [teachers] if isinstance(teachers, str) else list(teachers)
    ensemble_sizes = args.teacher_image_sizes  # one resolution per ensemble member
    info = StudentCardInfo(
        repo_id=f"your-username/{recipe['name']}",  # a placeholder until the student is pushed
        student_name=args.student_model_name_or_path,
        student_library="timm",
        teacher_ids=["./" + t if t.startswith("outputs/") else t for t in teachers],  # local dirs as paths
        dataset_id=args.dataset_name,
        dataset_config=args.dataset_config_name,
        dataset_split=args.eval_split,
        label_names=labels,
        metrics={},
        student_params=parameters(args.student_model_name_or_path, len(labels)),
        teacher_params=sum(parameters(arch, len(labels)) for arch in recipe["teacher_arch"]),
        methods=methods_of(args),
        training_config=training_config(
            args, teacher_image_size=ensemble_sizes or None, world_size=recipe.get("world_size", 1)
        ),
        image_size=args.image_size,
        teacher_image_size=args.teacher_image_size or (ensemble_sizes or [None])[0],
    )
    card = render_model_card(info)
    text = str(card)
    if labels[0] == "class 0":  # names unknown offline: say where they come from instead of placeholders
        text = re.sub(
            r"- \*\*Classes \((\d+)\):\*\* .*", r"- **Classes (\1):** the dataset's `ClassLabel` names", text
        )
    text = re.sub(
        r"## Results\n.*?(?=## Training procedure)",
        lambda _: expected_section(config_file, recipe),
        text,
        flags=re.DOTALL,
    )
    return ModelCard(text)


def main() -> None:
    for config_file, recipe in RECIPES.items():
        if not (CONFIGS / config_file).exists():
            print(f"skipped {config_file}: no such recipe config")
            continue
        card = render(config_file, recipe)
        if ModelCard(str(card)).data.pipeline_tag != "image-classification":  # the metadata must parse back
            raise ValueError(f"{config_file}: the rendered card's metadata does not parse back")
        target = OUT / recipe["name"] / "README.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        card.save(target)
        print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
