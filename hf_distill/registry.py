"""Every method and teacher source, listed once.

Adding a method is one new file with a :class:`~hf_distill.method.Method` subclass plus one line in
:data:`METHODS` (see the README's developer section). The order is the order the trainer consults them:
feature taps first (others may train beside the tapped student), then the methods that change the
student's forward or the batch.
"""

from __future__ import annotations

from .augment import AugmentationMethod
from .collators import validate_view_config
from .config import register_resolver, register_validator
from .deit import DeiTMethod
from .dml import DMLMethod
from .features import FeatureMethod
from .label_bank import BankTeacher, validate_bank_config
from .mixing import validate_mix_config
from .optim import validate_optimizer_config
from .release import check_push_settings
from .slkd import SLKDMethod
from .teacher import LiveTeacher, validate_teacher_config
from .teacher_cache import CachedTeacher
from .terms import resolve_kd_defaults, validate_loss_config

METHODS = (FeatureMethod, DeiTMethod, AugmentationMethod, SLKDMethod, DMLMethod)

# The first source that applies to a config is the one the trainer uses.
TEACHER_SOURCES = (BankTeacher, CachedTeacher, LiveTeacher)

# Config checks of the modules that own the fields, run by DistillationConfig.__post_init__ in this order.
CONFIG_VALIDATORS = (
    validate_loss_config,
    validate_view_config,
    *(method.validate_config for method in METHODS if method is FeatureMethod or method is DMLMethod),
    validate_mix_config,
    *(method.validate_config for method in METHODS if method in (AugmentationMethod, DeiTMethod)),
    validate_optimizer_config,
    validate_bank_config,
    validate_teacher_config,
    SLKDMethod.validate_config,
    check_push_settings,
)
for _validate in CONFIG_VALIDATORS:
    register_validator(_validate)
register_resolver(resolve_kd_defaults)  # temperature / alpha left at None: the method's defaults


def teacher_source_class(args, has_teacher: bool):
    """The teacher-source class a config selects (None: no teacher at all)."""
    for source in TEACHER_SOURCES:
        if source.applies(args, has_teacher):
            return source
    return None
