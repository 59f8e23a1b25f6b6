"""Top-1 agreement between a student's and a teacher's predictions."""

import datasets
import evaluate
import numpy as np

from hf_distill.metric_io import NumpyBatchMixin, arrow_format, row_blocks

_DESCRIPTION = """
Teacher agreement: the fraction of samples on which the student's top-1 class (argmax of its scores)
is the same as the teacher's. It measures how faithfully a distilled student imitates its teacher,
independently of the true labels. Scores are stored as float32; argmax ties resolve to the lowest class
index, as in `numpy.argmax`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`, or an array of shape (num_samples, num_classes)):
        Student scores (e.g. logits) for every sample.
    references (`list` of `list` of `float`, or an array of shape (num_samples, num_classes)):
        Teacher scores for the same samples, over the same classes.
Returns:
    `teacher_agreement` (`float` in [0, 1]): fraction of samples where both argmaxes coincide.
Examples:
    >>> metric = evaluate.load("path/to/teacher_agreement")
    >>> metric.compute(predictions=[[2.0, 1.0], [0.0, 3.0]], references=[[5.0, 0.0], [1.0, 0.0]])
    {'teacher_agreement': 0.5}
"""

_CITATION = """
@inproceedings{stanton2021does,
  title     = {Does Knowledge Distillation Really Work?},
  author    = {Stanton, Samuel and Izmailov, Pavel and Kirichenko, Polina and Alemi, Alexander A. and
               Wilson, Andrew Gordon},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {34},
  year      = {2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TeacherAgreement(NumpyBatchMixin, evaluate.Metric):
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
                reference_urls=["https://arxiv.org/abs/2106.05945"],
            )
        )

    def _compute(self, predictions, references):
        agree = 0
        total = 0
        for student, teacher in row_blocks((predictions, np.float32, True), (references, np.float32, True)):
            if student.shape != teacher.shape:
                raise ValueError(
                    f"student and teacher scores differ in shape: {student.shape} vs {teacher.shape}"
                )
            if student.shape[1] == 0:
                raise ValueError("scores must cover at least one class")
            agree += int(np.count_nonzero(student.argmax(axis=1) == teacher.argmax(axis=1)))
            total += student.shape[0]
        if total == 0:
            raise ValueError("teacher_agreement needs at least one sample")
        return {"teacher_agreement": agree / total}
