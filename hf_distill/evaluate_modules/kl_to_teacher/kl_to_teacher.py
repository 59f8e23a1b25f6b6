"""Mean KL divergence from the teacher's to the student's temperature-softened class distribution."""

import datasets
import evaluate
import numpy as np

from hf_distill.metric_io import NumpyBatchMixin, arrow_format, row_blocks

_DESCRIPTION = """
KL to teacher: the per-sample Kullback-Leibler divergence KL(p_teacher || p_student), averaged over
samples, where p = softmax(logits / temperature). Zero when the student reproduces the teacher's
predictive distribution exactly; measured in nats. Unlike the distillation loss of Hinton et al., the
value is not multiplied by temperature**2. Inputs are stored as float32; the computation runs in float64.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, or an array of shape (num_samples, num_classes)):
        Student logits for every sample.
    references (`list` of `list` of `float`, or an array of shape (num_samples, num_classes)):
        Teacher logits for the same samples, over the same classes.
    temperature (`float`, *optional*, defaults to 1.0): Softmax temperature applied to both, > 0.
Returns:
    `kl_to_teacher` (`float` >= 0): mean KL(softmax(teacher / T) || softmax(student / T)).
Examples:
    >>> metric = evaluate.load("path/to/kl_to_teacher")
    >>> metric.compute(predictions=[[1.0, 2.0]], references=[[1.0, 2.0]])
    {'kl_to_teacher': 0.0}
"""

_CITATION = """
@article{hinton2015distilling,
  title   = {Distilling the Knowledge in a Neural Network},
  author  = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal = {arXiv preprint arXiv:1503.02531},
  year    = {2015}
}

@inproceedings{stanton2021does,
  title     = {Does Knowledge Distillation Really Work?},
  author    = {Stanton, Samuel and Izmailov, Pavel and Kirichenko, Polina and Alemi, Alexander A. and
               Wilson, Andrew Gordon},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {34},
  year      = {2021}
}
"""


def _log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def kl_per_sample(student_logits, teacher_logits, temperature=1.0):
    """KL(softmax(teacher / T) || softmax(student / T)) for every row, computed in float64."""
    student = np.asarray(student_logits, dtype=np.float64) / temperature
    teacher = np.asarray(teacher_logits, dtype=np.float64) / temperature
    if not (np.isfinite(student).all() and np.isfinite(teacher).all()):
        # Infinite logits: explicit form, with 0 * log(0 / q) taken as 0.
        log_p_s = _log_softmax(student)
        log_p_t = _log_softmax(teacher)
        p_t = np.exp(log_p_t)
        with np.errstate(invalid="ignore"):
            return np.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0).sum(axis=1)
    # Finite logits: with a = t - max(t), b = s - max(s),
    # KL = sum_i softmax(a)_i * (a_i - b_i) - logsumexp(a) + logsumexp(b), which needs two exps, not three.
    teacher -= teacher.max(axis=1, keepdims=True)
    student -= student.max(axis=1, keepdims=True)
    exp_teacher = np.exp(teacher)
    z_teacher = exp_teacher.sum(axis=1)
    z_student = np.exp(student).sum(axis=1)
    teacher -= student
    cross = np.einsum("ij,ij->i", exp_teacher, teacher)
    return cross / z_teacher - np.log(z_teacher) + np.log(z_student)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KlToTeacher(NumpyBatchMixin, evaluate.Metric):
    def _info(self):
        return arrow_format(
            evaluate.MetricInfo(
                description=_DESCRIPTION,
                citation=_CITATION,
                inputs_description=_KWARGS_DESCRIPTION,
                features=datasets.Features(
                    {
                        "predictions": datasets.List(datasets.Value("float32")),
                        "references": datasets.List(datasets.Value("float32")),
                    }
                ),
                reference_urls=["https://arxiv.org/abs/1503.02531", "https://arxiv.org/abs/2106.05945"],
            )
        )

    def _compute(self, predictions, references, temperature=1.0):
        temperature = float(temperature)
        if not np.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a positive finite number, got {temperature}")
        total_kl = 0.0
        total = 0
        for student, teacher in row_blocks((predictions, np.float32, True), (references, np.float32, True)):
            if student.shape != teacher.shape:
                raise ValueError(
                    f"student and teacher logits differ in shape: {student.shape} vs {teacher.shape}"
                )
            if student.shape[1] == 0:
                raise ValueError("logits must cover at least one class")
            total_kl += float(kl_per_sample(student, teacher, temperature).sum())
            total += student.shape[0]
        if total == 0:
            raise ValueError("kl_to_teacher needs at least one sample")
        return {"kl_to_teacher": total_kl / total}
