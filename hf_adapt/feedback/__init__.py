"""Learning from user feedback: the feedback log, converters to TRL datasets, and loading what a round trained.

``import hf_adapt.feedback`` stays light: TRL, datasets and the models load when used.
"""

from hf_adapt.feedback.log import FeedbackLog, FeedbackSet, check_record, read_feedback

__all__ = ["FeedbackLog", "FeedbackSet", "check_record", "read_feedback", "load_policy", "load_reward_model"]


def load_policy(*args, **kwargs):
    """See :func:`hf_adapt.feedback.model.load_policy`."""
    from hf_adapt.feedback.model import load_policy as load

    return load(*args, **kwargs)


def load_reward_model(*args, **kwargs):
    """See :func:`hf_adapt.feedback.model.load_reward_model`."""
    from hf_adapt.feedback.model import load_reward_model as load

    return load(*args, **kwargs)
