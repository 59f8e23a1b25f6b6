"""Deep mutual learning (Zhang et al., CVPR 2018): the student and its peers learn from the labels and from
each other; no teacher. Every network is saved in Hub layout (the student in output_dir, peer k in
output_dir/peers/peerk).

    accelerate launch recipes/dml.py --config recipes/configs/dml_digits.yaml
"""

from pathlib import Path

from hf_distill import DistillationTrainer
from hf_distill.cli import load_splits, parse_config, run
from hf_distill.online import evaluate_peer, peer_names

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "dml_digits.yaml"


def main(argv=None):
    args = parse_config(default_config=DEFAULT_CONFIG, argv=argv)
    train, evaluation = load_splits(args)
    trainer = DistillationTrainer(args=args, train_dataset=train, eval_dataset=evaluation)
    metrics = run(trainer, args)
    for name in peer_names(trainer):
        out = Path(args.output_dir) / "peers" / name
        trainer.save_peer(name, str(out))
        if evaluation is not None and trainer.is_world_process_zero():
            print(
                f"{name} accuracy: {evaluate_peer(trainer, name, evaluation):.4f}, saved to {out.resolve()}"
            )
    return metrics


if __name__ == "__main__":
    main()
