"""Teacher-assistant KD (Mirzadeh et al., AAAI 2020): teacher -> assistant(s) -> student, each stage an
ordinary DistillationTrainer run whose teacher is the previous stage's saved student.

    accelerate launch recipes/takd.py --config recipes/configs/takd_digits.yaml
"""

from pathlib import Path

from hf_distill.cli import load_splits, parse_config
from hf_distill.online import TAKDConfig, run_takd

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "takd_digits.yaml"


def main(argv=None):
    args = parse_config(config_class=TAKDConfig, default_config=DEFAULT_CONFIG, argv=argv)
    train, evaluation = load_splits(args)
    results = run_takd(args, train, evaluation)
    for stage, metrics in results.items():
        accuracy = metrics.get("eval_accuracy")
        shown = f"{accuracy:.4f}" if accuracy is not None else "n/a"
        print(f"{stage}: accuracy {shown}, saved to {Path(metrics['output_dir']).resolve()}")
    return results


if __name__ == "__main__":
    main()
